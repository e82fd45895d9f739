"""Config files for `--config=configs/<name>.py[:arg]`, installed as probing.configs."""
