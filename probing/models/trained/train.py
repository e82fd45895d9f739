"""Training an embedded model on the generated world, in two stages that fit a CPU budget.

Trained end to end on yes/no answers, a tiny VLM stays at chance for
hundreds of steps (the answer is one bit, and the model must first learn to
see, then to compare caption words with what it sees). Two stages and two
deep-supervision targets make it learn in minutes:

* **Stage A (vision proxy).** The vision tower and projector alone learn, for
  every image token, which shapes and colours cover its cell, and the
  background from their mean, through a linear head that is then discarded.
  No decoder runs, so a step is cheap.
* **Stage B (language).** The tower is frozen and run once per image; the
  projector and the decoder learn to answer the caption question
  ("This image contains: ...\\nIs this right?" → Yes / No) and to name the
  objects, with next-token loss on the answer. Two discarded linear heads add
  dense targets: after decoder layer 1, at every text position, which
  colours / shapes / background the image holds; after layer 3, at every
  colour, shape or background word of the caption, whether it is true of the
  image. The answer then only has to combine word verdicts.

Everything is deterministic from ``TrainSettings.seed`` on one thread.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from absl import logging

from probing.models.registry import adapter_class_for_model_type
from probing.models.trained import world
from probing.models.trained.families import PreparedImage, TrainedFamily
from probing.models.trained.sequences import SequenceBuilder, collate
from probing.progress import Progress


@dataclass
class TrainSettings:
    seed: int = 0
    train_images: int = 3000
    # Held-out images scored during training (the model card scores more).
    monitor_images: int = 200
    steps_a: int = 600
    steps_b: int = 1000
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    # Stage A weighs the category (shape) targets this much more than the
    # colour and background ones. 3.0 left shapes as unreadable from the mean
    # image token as 1.0 (logistic ROC-AUC on demo-seed images, generator
    # version 4: Qwen2-VL 0.62, 0.62 with 36-64 image tokens, 0.64 with 1500
    # steps; FastVLM 0.56).
    category_weight: float = 1.0
    # Stage-A weights of two more read-outs (0 leaves them out): every drawn
    # object's category from its tokens averaged by how much of each token's
    # cell it covers (softmax over categories), and the image's presence
    # vector from the mean of its tokens (what a linear probe of image_mean
    # reads).
    object_weight: float = 0.0
    image_mean_weight: float = 0.0
    # Stage A draws fresh world images every step (after the train_images
    # that stage B uses) instead of revisiting train_images.
    #
    # Measured as benchmarks/shape_probe.py does (mean category ROC-AUC of a
    # logistic read-out of the mean image token, demo-seed images; colours
    # the same way). Generator version 4 (outlines only): Qwen2-VL 0.597-0.671
    # whatever the options (0.627 memorised on 3000 fixed images, 0.651
    # fresh); FastVLM at most 0.694. Qwen2-VL on patterns in a shade of the
    # object's colour: committed recipe 0.607 (its cell head told object from
    # background, not category: the head's own image-level maximum scored
    # 0.617), object_weight 2 0.696, with 1500 steps at lr 0.01 0.700. On
    # accents over half of each object: recipe 0.734, object_weight 2 0.771,
    # with fresh images 0.832, and with 7-pixel patches merged 4×4 0.905 but
    # colours 0.843 (0.955 before accents); accents over a quarter 0.853
    # (colours 0.889); over 3/8 (version 5) 0.889, colours 0.869, stage A
    # 242 s: the recipe (Qwen2VL.settings). FastVLM, half accents,
    # object_weight 2, fresh images: 0.677 (colours 0.58); all stages
    # trained: 0.716 (colours 0.55, stage A 429 s); version 5, object_weight
    # 1, fresh images, one frozen stage: 0.748 (colours 0.59, 370 s); twice
    # the FastViT widths: 0.724 (colours 0.67, 425 s); object_weight 2
    # alone: 0.641 (colours 0.57). Its recipe stays (committed: 0.631,
    # colours 0.703; trained:qwen2_vl 0.889, colours 0.869).
    fresh_images_a: bool = False
    # Share of stage-B examples that ask for the objects' names (the rest are
    # caption questions, half of them negatives), from naming_start (a
    # fraction of steps_b) on: the caption question is learnt first.
    naming_fraction: float = 0.2
    naming_start: float = 0.4
    # Share of negative caption questions whose caption is a near miss (one
    # word of a true caption swapped), the rest are another image's caption.
    near_miss_fraction: float = 0.5
    # Stage B trains the projector too (False: only the decoder learns).
    train_projector_b: bool = False
    # Decoder outputs (hidden-state indices) carrying the deep-supervision heads.
    presence_layer: int = 1
    word_layer: int = 3
    log_every: int = 100


@dataclass
class WorldImage:
    scene: object
    prepared: PreparedImage
    presence: np.ndarray


def load_world(family: TrainedFamily, processor, scenes: list) -> list[WorldImage]:
    """The scenes, preprocessed once by the family's image processor."""
    return [
        WorldImage(scene, family.prepare(processor, scene.image), world.presence_vector(scene))
        for scene in scenes
    ]


def _optimizer(params, settings: TrainSettings, steps: int):
    optimizer = torch.optim.AdamW(
        params, lr=settings.learning_rate, weight_decay=settings.weight_decay, betas=(0.9, 0.98)
    )

    def factor(step: int) -> float:  # linear warm-up, cosine decay to 0
        warm = min(1.0, (step + 1) / settings.warmup_steps)
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _step(optimizer, scheduler, loss, params) -> None:
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()


@dataclass
class VisionTargets:
    """Stage-A targets of one image: cells, objects (coverage-weighted), presence."""

    cells: torch.Tensor  # [tokens, CELL_TARGET_SIZE] multi-hot
    coverage: torch.Tensor  # [visible objects, tokens], rows sum to 1
    categories: torch.Tensor  # [visible objects] category index
    presence: torch.Tensor  # [PRESENCE_SIZE]


def vision_targets(item: WorldImage) -> VisionTargets:
    size, cells = item.prepared.size, item.prepared.cells
    share = torch.as_tensor(world.object_coverage(item.scene, size, cells))
    seen = share.sum(1) > 0  # an object may be hidden under later ones
    return VisionTargets(
        torch.as_tensor(world.cell_targets(item.scene, size, cells)),
        (share[seen] / share[seen].sum(1, keepdim=True)).float(),
        torch.tensor([o.category_index for o in item.scene.objects])[seen],
        torch.as_tensor(item.presence),
    )


def train_vision(
    model,
    family: TrainedFamily,
    train: list[WorldImage],
    settings: TrainSettings,
    processor=None,
) -> torch.nn.Linear:
    """Stage A: tower and projector learn what covers each token cell and the image; returns the head.

    With ``settings.fresh_images_a`` (``processor`` needed) every step draws
    ``batch_size`` world images never drawn before instead of sampling ``train``.
    """
    hidden = model.config.get_text_config().hidden_size
    head = torch.nn.Linear(hidden, world.CELL_TARGET_SIZE + world.PRESENCE_SIZE)
    categories = len(world.CATEGORY_NAMES)
    cell_weight = torch.ones(world.CELL_TARGET_SIZE)
    cell_weight[:categories] = settings.category_weight
    presence_weight = torch.ones(world.PRESENCE_SIZE)
    presence_weight[len(world.COLOURS) : len(world.COLOURS) + categories] = settings.category_weight
    # Only heads in use are drawn (from the global RNG that stage B draws from too).
    object_head = torch.nn.Linear(hidden, categories) if settings.object_weight else None
    image_head = (
        torch.nn.Linear(hidden, world.PRESENCE_SIZE) if settings.image_mean_weight else None
    )
    if not settings.fresh_images_a:
        targets = [vision_targets(item) for item in train]
        cached = []
        for start in range(0, len(train), 64):
            cached += family.frozen_a(model, [item.prepared for item in train[start : start + 64]])
    params = family.params_a(model) + list(head.parameters())
    params += [p for h in (object_head, image_head) if h is not None for p in h.parameters()]
    optimizer, scheduler = _optimizer(params, settings, settings.steps_a)
    rng = np.random.default_rng([settings.seed, 1])
    progress = Progress("stage A (vision)", settings.steps_a, unit="steps")
    model.train()
    for step in range(settings.steps_a):
        if settings.fresh_images_a:
            # Images train_images, train_images + 1, ... of the training split.
            first = settings.train_images + step * settings.batch_size
            scenes = [
                world.scene(world.TRAIN_SPLIT_INDEX, first + i) for i in range(settings.batch_size)
            ]
            items = load_world(family, processor, scenes)
            batch_targets = [vision_targets(item) for item in items]
            with torch.no_grad():
                batch_cached = family.frozen_a(model, [item.prepared for item in items])
        else:
            batch = rng.integers(0, len(train), settings.batch_size).tolist()
            items = [train[k] for k in batch]
            batch_targets = [targets[k] for k in batch]
            batch_cached = [cached[k] for k in batch]
        tokens = family.tokens_a(model, batch_cached, [item.prepared for item in items])
        logits = head(tokens)
        cell = torch.cat([t.cells for t in batch_targets])
        presence = torch.stack([t.presence for t in batch_targets])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, : world.CELL_TARGET_SIZE], cell, weight=cell_weight
        )
        # Image-level presence from a soft maximum over the image's tokens.
        sizes = [len(t.cells) for t in batch_targets]
        pooled = torch.stack(
            [
                torch.logsumexp(part, 0) - math.log(len(part))
                for part in logits[:, world.CELL_TARGET_SIZE :].split(sizes)
            ]
        )
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
            pooled, presence, weight=presence_weight
        )
        parts = tokens.split(sizes)
        if settings.object_weight:
            pooled = torch.cat(
                [t.coverage @ part for t, part in zip(batch_targets, parts, strict=True)]
            )
            object_loss = torch.nn.functional.cross_entropy(
                object_head(pooled), torch.cat([t.categories for t in batch_targets])
            )
            loss = loss + settings.object_weight * object_loss
        if settings.image_mean_weight:
            mean = torch.stack([part.mean(0) for part in parts])
            loss = loss + settings.image_mean_weight * (
                torch.nn.functional.binary_cross_entropy_with_logits(image_head(mean), presence)
            )
        _step(optimizer, scheduler, loss, params)
        if (step + 1) % settings.log_every == 0:
            logging.info(
                "stage A step %d: loss %.3f%s",
                step + 1,
                loss.item(),
                f", object {object_loss.item():.3f}" if settings.object_weight else "",
            )
        progress.update(1)
    return head


class LanguageTrainer:
    """Stage B: projector and decoder learn to answer, with deep supervision."""

    def __init__(self, model, processor, family: TrainedFamily, settings: TrainSettings):
        self.model, self.family, self.settings = model, family, settings
        adapter = adapter_class_for_model_type(model.config.model_type)(model, processor)
        self.builder = SequenceBuilder(adapter, processor)
        self.pad_id = processor.tokenizer.pad_token_id
        self.padding_side = processor.tokenizer.padding_side
        hidden = model.config.get_text_config().hidden_size
        self.presence_head = torch.nn.Linear(hidden, world.PRESENCE_SIZE)
        self.word_head = torch.nn.Linear(hidden, 1)
        self.lm_head = model.get_output_embeddings()

    def _sequence(self, rng: random.Random, items: list[WorldImage], k: int, naming: bool):
        item = items[k]
        n = item.prepared.cells[0] * item.prepared.cells[1]
        if naming:
            return self.builder.build(n, world.NAMING_PROMPT, world.naming_answer(item.scene))
        caption, answer = rng.choice(item.scene.captions), world.YES
        draw = rng.random()
        if draw < self.settings.near_miss_fraction / 2:
            near_miss = world.perturb_caption(
                caption, item.scene, np.random.default_rng(rng.getrandbits(32))
            )
            if near_miss is not None:
                caption, answer = near_miss, world.NO
        elif draw < 0.5:
            other = rng.randrange(len(items) - 1)
            other += other >= k  # any image but this one
            caption, answer = rng.choice(items[other].scene.captions), world.NO
        return self.builder.build(n, world.caption_prompt(caption), answer, truth_of=item.scene)

    def batch(self, rng: random.Random, items, cached, indices, naming_fraction: float):
        sequences = [self._sequence(rng, items, k, rng.random() < naming_fraction) for k in indices]
        presence = np.stack([items[k].presence for k in indices])
        batch = collate(sequences, presence, self.pad_id, self.padding_side)
        batch.update(
            self.family.model_inputs(
                self.model,
                batch["input_ids"],
                [cached[k] for k in indices],
                [items[k].prepared for k in indices],
            )
        )
        return batch

    def forward(self, batch):
        """(total loss, answer logits at the labelled positions, their labels)."""
        inputs = {
            k: v for k, v in batch.items() if k not in ("labels", "word", "after_image", "presence")
        }
        out = self.model.model(**inputs, output_hidden_states=True)
        labels = batch["labels"][:, 1:]
        scored = labels != -100
        logits = self.lm_head(out.last_hidden_state[:, :-1][scored])
        parts = {"answer": torch.nn.functional.cross_entropy(logits, labels[scored])}
        after = batch["after_image"]
        presence = self.presence_head(out.hidden_states[self.settings.presence_layer][after])
        target = batch["presence"][:, None].expand(-1, after.shape[1], -1)[after]
        parts["presence"] = torch.nn.functional.binary_cross_entropy_with_logits(presence, target)
        words = batch["word"] >= 0
        if words.any():
            verdict = self.word_head(out.hidden_states[self.settings.word_layer][words])[:, 0]
            parts["word"] = torch.nn.functional.binary_cross_entropy_with_logits(
                verdict, batch["word"][words]
            )
        self.parts = {name: round(value.item(), 3) for name, value in parts.items()}
        return sum(parts.values()), logits, labels[scored]

    def caption_accuracy(self, items: list[WorldImage], cached) -> float:
        """Yes/no accuracy on caption questions about ``items`` (fixed draw)."""
        rng = random.Random(self.settings.seed + 7)
        yes = self.builder.answer_ids[world.YES][0]
        no = self.builder.answer_ids[world.NO][0]
        correct = 0
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(items), 50):
                indices = list(range(start, min(start + 50, len(items))))
                batch = self.batch(rng, items, cached, indices, naming_fraction=0.0)
                _, logits, labels = self.forward(batch)
                # Two scored positions per row: the answer, then <|im_end|>.
                answer, truth = logits[0::2], labels[0::2]
                correct += int(((answer[:, yes] > answer[:, no]) == (truth == yes)).sum())
        self.model.train()
        return correct / len(items)

    def train(self, train: list[WorldImage], monitor: list[WorldImage]) -> list[dict]:
        settings = self.settings
        cached, monitor_cached = [], []
        for items, out in ((train, cached), (monitor, monitor_cached)):
            for start in range(0, len(items), 64):
                out += self.family.frozen_b(
                    self.model, [i.prepared for i in items[start : start + 64]]
                )
        self.model.requires_grad_(False)
        trainable = [self.model.model.language_model]
        if settings.train_projector_b:
            trainable.append(self.family.projector(self.model))
        for module in trainable:
            module.requires_grad_(True)
        params = [p for m in trainable for p in m.parameters()]
        params += [*self.presence_head.parameters(), *self.word_head.parameters()]
        optimizer, scheduler = _optimizer(params, settings, settings.steps_b)
        rng = random.Random(settings.seed)
        progress = Progress("stage B (language)", settings.steps_b, unit="steps")
        history = []
        self.model.train()
        for step in range(settings.steps_b):
            indices = [rng.randrange(len(train)) for _ in range(settings.batch_size)]
            naming = (
                settings.naming_fraction
                if step >= settings.naming_start * settings.steps_b
                else 0.0
            )
            batch = self.batch(rng, train, cached, indices, naming)
            loss, _, _ = self.forward(batch)
            _step(optimizer, scheduler, loss, params)
            if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps_b:
                accuracy = self.caption_accuracy(monitor, monitor_cached)
                history.append({"step": step + 1, **self.parts, "held_out_yes_no": accuracy})
                logging.info("stage B step %d: %s", step + 1, history[-1])
            progress.update(1)
        return history


def train_model(family: TrainedFamily, settings: TrainSettings):
    """Builds and trains one family; returns (model, processor, training record)."""
    torch.manual_seed(settings.seed)
    started = time.time()
    scenes = [world.scene(world.TRAIN_SPLIT_INDEX, i) for i in range(settings.train_images)]
    # The tokenizer learns the world's own text: training captions and answers.
    texts = [c for scene in scenes for c in scene.captions]
    texts += [world.naming_answer(scene) for scene in scenes]
    model, processor = family.build(world.tokenizer_corpus(texts))
    train = load_world(family, processor, scenes)
    held_out = [world.scene(world.HELD_OUT_SPLIT_INDEX, i) for i in range(settings.monitor_images)]
    monitor = load_world(family, processor, held_out)
    prepared_s = time.time() - started
    train_vision(model, family, train, settings, processor)
    vision_s = time.time() - started - prepared_s
    history = LanguageTrainer(model, processor, family, settings).train(train, monitor)
    model.eval()
    model.requires_grad_(False)
    record = {
        "settings": asdict(settings),
        "seconds": {
            "data": round(prepared_s, 1),
            "stage_a": round(vision_s, 1),
            "stage_b": round(time.time() - started - prepared_s - vision_s, 1),
        },
        "history": history,
    }
    return model, processor, record
