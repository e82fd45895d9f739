"""The workdir: TensorStore arrays and JSON files shared by both stages."""
