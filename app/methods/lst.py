"""LST — Ladder Side-Tuning (Sung, Cho & Bansal, NeurIPS 2022) for sequence classification, on
encoders and on decoders (LLaMA family, GPT-2).

A small side network (the backbone's own layer type, every width divided by r) runs beside the
frozen backbone. Before side block k, a gated ladder mixes the side stream with a projection of
the backbone's hidden state:

    mu_k = sigmoid(alpha_k / T)
    h    = mu_k * h + (1 - mu_k) * down_k(h_backbone)

Every trainable parameter (ladder projections, gates, side layers, upsampling, head) lives
outside the backbone, which runs under `torch.no_grad()` in eval mode: autograd keeps none of
its activations and backward never enters it. That is where the training memory goes.

On a decoder the side layers are the backbone's decoder layers, causal like it. On the LLaMA
family (RMSNorm, SwiGLU, grouped-query attention with the same head and key/value-head counts)
they use rotary positions at the side head size with the kept dimension pairs' own frequencies.
A final norm pruned from the backbone's closes the side stream, and the last real token's state
is pooled.

Two settings go beyond the paper's defaults: `gate_init` starts the gates nearer 1 on stacks deeper
than the paper's 12 blocks (at 0.5 the first blocks of a 30-layer decoder get no usable gradient),
and `final_merge` mixes the backbone's own final state into the head's input through one more gate
(the official code's `merge_last`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layer_stack import LayerStack
from ..lm_loss import causal_lm_loss
from ..options import option
from ..pooling import FIRST, LAST, MEAN, pool_tokens
from ..tasks import CAUSAL_LM, TASKS
from . import lst_init
from .base import BuildContext, Method, MethodConfig, StepOutput, TrainState, has_token_labels, model_inputs
from .export_writers import save_lab_state

LAYER_DROPPING = ("all", "every_other", "list")
INIT_CHOICES = ("magnitude", "fisher", "random")
HIST_BINS = 20
HIST_RANGE = (-4.0, 4.0)
HIST_EDGES = [HIST_RANGE[0] + i * (HIST_RANGE[1] - HIST_RANGE[0]) / HIST_BINS for i in range(HIST_BINS + 1)]
PCA_DECIMALS = 4


@dataclass
class LSTConfig(MethodConfig):
    reduction_factor: int = option(
        8, "Side network width divisor r: hidden d/r, FFN d_ff/r, per-head size d_head/r, same head count.",
        min=1, max=64,
    )
    layer_dropping: str = option(
        "all", "Which backbone layers feed side blocks: all, every_other (counting back from the last "
        "layer), or list (the layer_indices below). Fewer side blocks use less memory.",
        choices=list(LAYER_DROPPING),
    )
    layer_indices: list[int] = option(
        [], "0-based backbone layers whose outputs feed side blocks, used when layer_dropping is 'list' "
        "(e.g. 1,3,5).",
    )
    init: str = option(
        "magnitude", "Side network init: structural pruning of the backbone by L1 magnitude or Fisher "
        "importance (the paper's; one backward pass per scored example, about a minute on a CPU), or "
        "random (the ablation the paper shows trains worse). Measured here, 3 seeds, 80 steps: "
        "magnitude and Fisher within their seed spread, so the cheap one is the default.",
        choices=list(INIT_CHOICES),
    )
    fisher_samples: int = option(
        1024, "Shuffled training examples scored for Fisher importance, one backward pass each (init = fisher "
        "only; the official code uses 1,024).", min=1, max=100_000,
        advanced=True,
    )
    gate_temperature: float = option(
        0.1, "Temperature T of the ladder gates mu = sigmoid(alpha / T).",
        min=1e-3, max=100.0, advanced=True,
    )
    gate_init: float | None = option(
        None, "Starting value of every ladder gate mu, the share of the side stream kept at each block (the "
        "rest comes from the backbone's ladder). Block k's output reaches the head scaled by the product "
        "of the later gates, so at 0.5 on a 30-block stack the first gates get gradients near 1e-11 and "
        "never move. Empty: 0.5 (the paper's) up to 12 side blocks, the paper's T5-base depth; beyond, "
        "0.5^((12/n)^2) for n blocks: 0.84 on 24, 0.895 on 30, where every gate then gets a gradient "
        "above 1e-5 (0.5^(12/n), 0.758 on 30, still leaves 4 below 1e-6).",
        min=0.01, max=0.99, advanced=True,
    )
    lm_output: str = option(
        "residual", "causal-lm only: what the frozen LM head reads. residual: the backbone's own final state plus "
        "the upsampled side output, the upsampling starting at zero, so step 0 writes exactly what the backbone "
        "writes and training moves it from there (the way LoRA's update starts at zero); side: the upsampled "
        "side output alone, as the official T5 code feeds its LM head (step 0 then starts from the pruned "
        "copy, far from the backbone's answers).",
        choices=["residual", "side"],
    )
    final_merge: bool = option(
        False, "Mix the frozen backbone's own final hidden state into the side network's output before the "
        "head, through one learned gate (starting at half each). The official code's merge_last option; "
        "Quantized Side Tuning mixes the two the same way. Costs no memory for backward: nothing "
        "backpropagates into the backbone.",
    )
    pooling: str = option(
        "auto", "How the final side states become one vector: auto (the mean over tokens on encoders, the last "
        "real token on decoders), mean, first (encoders) or last token.",
        choices=["auto", MEAN, FIRST, LAST],
    )
    attention_dropout: float = option(
        0.0, "Dropout on the side network's attention weights. Off by default: the side network keeps the "
        "backbone's head count, so its attention maps do not shrink with r, and with dropout on them "
        "PyTorch's attention kernel falls back to a path that keeps every map for backward.",
        min=0.0, max=0.9, advanced=True,
    )
    classifier_dropout: float = option(0.1, "Dropout before the classification head.", min=0.0, max=0.9)
    cache_hidden_states: bool = option(
        False, "Keep the frozen backbone's hidden states of training examples after their first pass, so "
        "later epochs run only the side network (the backbone is deterministic in eval mode).",
    )
    cache_mb: int = option(
        1024, "Memory limit of that cache in MB; examples beyond it are recomputed every epoch.",
        min=1, max=1_000_000, advanced=True,
    )

    def validate(self) -> None:
        if self.layer_dropping == "list":
            if not self.layer_indices:
                raise ConfigError("layer_dropping 'list' needs layer_indices, e.g. 1,3,5")
        elif self.layer_indices:
            raise ConfigError(
                f"layer_indices are only used with layer_dropping 'list' (now '{self.layer_dropping}'); "
                "set layer_dropping to list or clear layer_indices"
            )
        if any(i < 0 for i in self.layer_indices):
            raise ConfigError(f"layer_indices must be 0 or more, got {self.layer_indices}")
        if len(set(self.layer_indices)) != len(self.layer_indices):
            raise ConfigError(f"layer_indices must not repeat a layer, got {self.layer_indices}")


# The official code's schedule for runs to convergence (lr 3e-3 at batch 100 -> 1e-3 at batch 32 by
# the linear rule, weight decay 0), with early stopping held back until the rate has fallen.
CONVERGENCE_PRESET = {
    "help": ("For runs trained to convergence with early stopping: the official code's schedule scaled to "
             "batch 32 (learning rate 1e-3, from 3e-3 at batch 100; weight decay 0; 6% warm-up, as its 500 "
             "steps of about 7,000) and early stopping that may end the run only in its second half, once the "
             "rate has fallen. On MiniLM-L6 + Rotten Tomatoes (5 epochs, patience 2, 3 seeds) it closed "
             "part of the gap to full fine-tuning left by the short-run default of 3e-3 (docs/benchmarks.md)."),
    "method_config": {},
    "run": {"lr": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.06, "patience": 2, "patience_from": 0.5,
            "batch_size": 32},
}
PAPER_DEPTH = 12  # side blocks of T5-base, where the paper's gates start at 0.5


def starting_gate(config: LSTConfig, blocks: int) -> float:
    """The gates' starting value: the setting, or by depth (see `LSTConfig.gate_init`)."""
    if config.gate_init is not None:
        return config.gate_init
    return 0.5 ** ((PAPER_DEPTH / max(PAPER_DEPTH, blocks)) ** 2)


def feed_layers(config: LSTConfig, num_layers: int) -> list[int]:
    """0-based backbone layers whose outputs feed the side blocks, in order."""
    if config.layer_dropping == "all":
        return list(range(num_layers))
    if config.layer_dropping == "every_other":
        # Counting back from the last layer keeps the backbone's final state in the ladder.
        return list(range(num_layers - 1, -1, -2))[::-1]
    bad = [i for i in config.layer_indices if i >= num_layers]
    if bad:
        raise ConfigError(
            f"layer_indices {bad} do not exist: the backbone has {num_layers} layers (0..{num_layers - 1})"
        )
    return sorted(config.layer_indices)


class HiddenStateCache:
    """Backbone hidden states of training examples, keyed by example index, within a byte budget.

    Only real tokens are stored: padded positions get zeros when a batch is rebuilt. Padded keys
    are masked in every attention and pooling ignores them, so their values never reach the loss
    or the gradients; storing them would only cost memory.
    """

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self.entries: dict[int, torch.Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def lookup(self, index: torch.Tensor, attention_mask: torch.Tensor, like: tuple[int, int]):
        """Stacked states (n_states, batch, length, hidden) when every example is cached, else None."""
        keys = index.tolist()
        if not all(k in self.entries for k in keys):
            self.misses += len(keys)
            return None
        self.hits += len(keys)
        n_states, hidden = like
        first = self.entries[keys[0]]
        batch, length = attention_mask.shape
        out = first.new_zeros(n_states, batch, length, hidden)
        real = attention_mask.bool()
        for row, key in enumerate(keys):
            out[:, row, real[row]] = self.entries[key]
        return out

    def store(self, index: torch.Tensor, attention_mask: torch.Tensor, stacked: torch.Tensor) -> None:
        real = attention_mask.bool()
        for row, key in enumerate(index.tolist()):
            if key in self.entries:
                continue
            entry = stacked[:, row, real[row]]  # boolean indexing copies: the entry owns its storage
            size = entry.numel() * entry.element_size()
            if self.bytes + size > self.limit_bytes:
                return
            self.entries[key] = entry
            self.bytes += size

    def summary(self) -> dict:
        return {"examples": len(self.entries), "bytes": self.bytes, "limit_bytes": self.limit_bytes,
                "hits": self.hits, "misses": self.misses}


def _norm_like(norm: nn.Module, width: int) -> nn.Module:
    """A final norm of the backbone's kind (LayerNorm or a model's RMSNorm) at the side width."""
    if isinstance(norm, nn.LayerNorm):
        return nn.LayerNorm(width, eps=norm.eps)
    return type(norm)(width, eps=norm.variance_epsilon)


def resolve_pooling(pooling: str, causal: bool) -> str:
    if pooling == "auto":
        return LAST if causal else MEAN
    return pooling


class LadderSideNetwork(nn.Module):
    """Frozen backbone + gated ladder + side network + head; `forward(**inputs)` gives logits.

    With `lm_head` (causal-lm) there is no classifier: `token_states` gives what the backbone's frozen
    LM head reads at every position, and `lm_output` says whether that is the backbone's own final
    state plus the side output (residual) or the side output alone (side)."""

    def __init__(self, backbone: nn.Module, side_config, feeds: list[int], label_names: list[str], *,
                 pooling: str, gate_temperature: float, classifier_dropout: float, gate_init: float = 0.5,
                 final_merge: bool = False, lm_head: nn.Module | None = None, lm_output: str = "residual"):
        super().__init__()
        self.backbone = backbone
        self.view = LayerStack(backbone)
        self.feeds = list(feeds)
        self.label_names = list(label_names)
        self.pooling = resolve_pooling(pooling, self.view.family.causal)
        self.rotary = hasattr(self.view.model, "rotary_emb")
        self.gate_temperature = gate_temperature
        d, ds = self.view.config.hidden_size, side_config.hidden_size
        self.embedding_dropout = nn.Dropout(getattr(side_config, "hidden_dropout_prob", 0.0))
        # downs[0] starts the side stream from the embeddings; downs[k + 1] feeds side block k.
        self.downs = nn.ModuleList(nn.Linear(d, ds) for _ in range(len(self.feeds) + 1))
        # mu = sigmoid(alpha / T) = gate_init at the start
        start = gate_temperature * math.log(gate_init / (1 - gate_init))
        self.gate_alpha = nn.Parameter(torch.full((len(self.feeds),), start))
        # The share of the side output in what the head reads when the backbone's final state is merged in.
        self.merge_alpha = nn.Parameter(torch.zeros(())) if final_merge else None
        self.side_layers = lst_init.build_side_layers(self.view, side_config, len(self.feeds))
        self.side_norm: nn.Module | None = None
        if self.view.family.causal:
            # The side stream of pre-norm layers is unnormalised, like the backbone's before its final
            # norm; a norm of the same kind at the side width closes it.
            self.side_norm = _norm_like(self.view.family.final_norm(self.view.model), ds)
        if self.rotary:
            # Each side layer's rotary frequencies: its kept dimension pairs' own (set at init, saved
            # with the weights). Until then, every r-th frequency of the backbone's.
            backbone_freq = self.view.model.rotary_emb.inv_freq.float()
            half = side_config.head_dim // 2
            stride = len(backbone_freq) // half
            self.register_buffer("side_inv_freq", backbone_freq[::stride][:half].repeat(len(self.feeds), 1).clone())
        self.upsample = nn.Linear(ds, d)
        self.head_dropout = nn.Dropout(classifier_dropout)
        # The frozen LM head keeps the backbone's name prefix: it is the backbone's, trains never and
        # is never saved with the side network (on tied models it is the input embedding itself).
        self.backbone_head = lm_head
        self.lm_output = lm_output if lm_head is not None else None
        self.classifier = nn.Linear(d, len(label_names)) if lm_head is None else None
        self.cache: HiddenStateCache | None = None
        self.record_stats = True  # per-block statistics for telemetry (read values: off for estimates)
        self.backbone_passes = 0  # how often the backbone really ran in training (cache misses)
        self.last_stats: dict | None = None
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        # The backbone stays in eval mode: no dropout in it, so its states are a fixed function of
        # the input (what makes the cache valid) and it behaves as the frozen feature source it is.
        self.backbone.eval()
        return self

    def get_output_embeddings(self) -> nn.Module | None:
        """The backbone's frozen LM head (causal-lm), as transformers models name theirs."""
        return self.backbone_head

    def side_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith(("backbone.", "backbone_head."))]

    @property
    def reads_final_state(self) -> bool:
        """Whether the backbone's own final state is one of the ladder's inputs (merged or added)."""
        return self.merge_alpha is not None or self.lm_output == "residual"

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.gate_alpha / self.gate_temperature)

    def merge_gate(self) -> torch.Tensor | None:
        """The side output's share of the head's input (the backbone's final state has the rest)."""
        return None if self.merge_alpha is None else torch.sigmoid(self.merge_alpha / self.gate_temperature)

    @property
    def state_count(self) -> int:
        """States the ladder reads: the embeddings, each feeding layer's output, and the backbone's
        final state when it is merged in."""
        return len(self.feeds) + 1 + self.reads_final_state

    # -- the frozen part ------------------------------------------------------------------
    @torch.no_grad()
    def _backbone_states(self, input_ids, attention_mask, token_type_ids) -> list[torch.Tensor]:
        """Embeddings, then each feeding layer's output (batch, length, d), then with the final merge
        the backbone's final state (after its final norm on decoders). Layers after the last one
        needed are not run at all."""
        hidden = self.view.embed(input_ids, token_type_ids)
        mask = self.view.layer_mask(attention_mask, hidden)
        context = self.view.layer_context(hidden)
        states = [hidden]
        wanted = set(self.feeds)
        last = self.view.num_layers - 1 if self.reads_final_state else self.feeds[-1]
        for i, layer in enumerate(self.view.layers[: last + 1]):
            hidden = self.view.run_layer(layer, hidden, mask, context)
            if i in wanted:
                states.append(hidden)
        if self.reads_final_state:
            states.append(self.view.normed(hidden))
        return states

    def backbone_states(self, input_ids, attention_mask, token_type_ids, example_index=None):
        """The ladder's inputs, indexable by k: from the cache when every example of the batch is in
        it (training only), else from a backbone pass."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        use_cache = self.cache is not None and example_index is not None and self.training
        if use_cache:
            cached = self.cache.lookup(example_index, attention_mask, (self.state_count, self.view.config.hidden_size))
            if cached is not None:
                return cached
        states = self._backbone_states(input_ids, attention_mask, token_type_ids)
        if self.training:
            self.backbone_passes += 1
        if use_cache:
            self.cache.store(example_index, attention_mask, torch.stack(states))
        return states

    # -- the trained part -------------------------------------------------------------------
    def side_features(self, input_ids, attention_mask=None, token_type_ids=None, example_index=None) -> torch.Tensor:
        """The pooled final side state (batch, d/r): what the head sees before upsampling."""
        return self._side_pass(input_ids, attention_mask, token_type_ids, example_index)[0]

    def _side_pass(self, input_ids, attention_mask, token_type_ids, example_index):
        """The pooled final side state, the ladder's inputs and the attention mask used."""
        h, states, attention_mask = self._side_stream(input_ids, attention_mask, token_type_ids, example_index)
        return pool_tokens(h, attention_mask, self.pooling), states, attention_mask

    def _side_stream(self, input_ids, attention_mask, token_type_ids, example_index):
        """Every token's final side state (after the side norm on decoders), the ladder's inputs and the
        attention mask used."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.backbone_states(input_ids, attention_mask, token_type_ids, example_index)
        with torch.no_grad():
            mask = self.view.layer_mask(attention_mask, states[0])
            # MPNet's relative position bias: the side network has the backbone's head count and
            # each side head is pruned from the same backbone head, so the backbone's own frozen
            # per-head bias is what those heads were trained with. Reusing it (computed from the
            # frozen table, no gradient) adds no parameters and keeps the pruned heads faithful.
            contexts = self.side_contexts(states[0])
        capture = self.training and self.record_stats
        stats = [] if capture else None
        real = attention_mask.bool()
        h = self.downs[0](self.embedding_dropout(states[0]))
        mus = self.gates()
        for k, layer in enumerate(self.side_layers):
            side_term = mus[k] * h
            ladder_term = (1 - mus[k]) * self.downs[k + 1](states[k + 1])
            h = self.view.run_layer(layer, side_term + ladder_term, mask, contexts[k])
            if capture:
                stats.append(_block_stats(h, side_term, ladder_term, real))
        if capture:
            self.last_stats = {"blocks": stats, "gates": mus.detach()}
            if self.merge_alpha is not None:
                self.last_stats["merge_gate"] = self.merge_gate().detach()
        if self.side_norm is not None:
            h = self.side_norm(h)
        return h, states, attention_mask

    def token_states(self, input_ids, attention_mask=None, token_type_ids=None, example_index=None) -> torch.Tensor:
        """causal-lm: what the frozen LM head reads at every position."""
        h, states, _ = self._side_stream(input_ids, attention_mask, token_type_ids, example_index)
        side = self.upsample(h)
        return states[-1] + side if self.lm_output == "residual" else side

    def side_contexts(self, hidden: torch.Tensor) -> list[dict]:
        """Each side layer's per-forward inputs: the backbone's (MPNet's position bias), or rotary
        embeddings at the side head size from that layer's own frequencies."""
        if not self.rotary:
            return [self.view.layer_context(hidden)] * len(self.side_layers)
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        scaling = getattr(self.view.model.rotary_emb, "attention_scaling", 1.0)
        contexts = []
        for inv_freq in self.side_inv_freq:
            freqs = positions[..., None].float() * inv_freq.to(hidden.device)
            angles = torch.cat((freqs, freqs), dim=-1)
            cos, sin = (angles.cos() * scaling).to(hidden.dtype), (angles.sin() * scaling).to(hidden.dtype)
            contexts.append({"position_embeddings": (cos, sin), "position_ids": positions})
        return contexts

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, example_index=None):
        pooled, states, attention_mask = self._side_pass(input_ids, attention_mask, token_type_ids, example_index)
        # Upsampling d/r -> d as in the official code. It is linear, so upsampling the pooled
        # vector equals pooling upsampled tokens (mean weights sum to 1), at a fraction of the cost.
        features = self.upsample(pooled)
        if self.merge_alpha is not None:
            # Pooling is linear too, so mixing pooled vectors equals mixing every token's state.
            share = self.merge_gate()
            final = pool_tokens(states[-1], attention_mask, self.pooling)
            features = share * features + (1 - share) * final
        return self.classifier(self.head_dropout(features))


@torch.no_grad()
def _block_stats(h: torch.Tensor, side_term: torch.Tensor, ladder_term: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """One side block's summary over real tokens, as one small tensor (converted at telemetry time):
    mean, std, rms, side-term norm, ladder-term norm, then the histogram counts. Values beyond
    the fixed range are counted in the end bins, so counts always add up to all values."""
    values = h.detach()[real].float()
    flat = values.reshape(-1)
    hist = torch.histc(flat.clamp(*HIST_RANGE), bins=HIST_BINS, min=HIST_RANGE[0], max=HIST_RANGE[1])
    head = torch.stack([
        flat.mean(),
        flat.std(unbiased=False),
        flat.pow(2).mean().sqrt(),
        side_term.detach()[real].float().norm(dim=-1).mean(),
        ladder_term.detach()[real].float().norm(dim=-1).mean(),
    ])
    return torch.cat([head, hist])


class LadderSideTuning(Method):
    name = "lst"
    title = "Ladder Side-Tuning (LST)"
    summary = ("A thin side network, pruned from the backbone, reads the frozen backbone's layer outputs "
               "through gated ladders; backprop never enters the backbone, so training memory drops.")
    Config = LSTConfig
    # Side networks start from a pruned, much narrower copy and train well with a high rate
    # (the official runs use 3e-3).
    default_lr = 3e-3
    presets = {"convergence": CONVERGENCE_PRESET}
    trains_side_network = True
    memory_grows_by_layer = True
    tasks = TASKS

    def check_task(self, task: str) -> None:
        super().check_task(task)
        if task != CAUSAL_LM:
            return
        if self.config.final_merge:
            raise ConfigError("final_merge mixes the backbone's final state into a classifier's input; on causal-lm "
                              "lm_output=residual adds it to the side output already")

    def memory_affine_in_layers(self) -> bool:
        # every_other and list feed a side block from some layers only: not one block per layer
        return self.config.layer_dropping == "all"

    def check_compatible(self, backbone, label_names: list[str]) -> None:
        lst_init.side_dimensions(backbone.config, self.config.reduction_factor)
        feed_layers(self.config, backbone.num_layers)
        if backbone.family.causal and self.config.pooling == FIRST:
            raise ConfigError("pooling 'first' reads a decoder's first token, which has seen no other token; "
                              "use last, mean or auto")

    def build(self, ctx: BuildContext) -> nn.Module:
        cfg = self.config
        lm_head = None
        if ctx.task == CAUSAL_LM:
            language_model = ctx.backbone.load_for_causal_lm()
            encoder, lm_head = language_model.base_model, language_model.get_output_embeddings()
            lm_head.requires_grad_(False)
        else:
            encoder = ctx.backbone.load_encoder()
        view = LayerStack(encoder)
        feeds = feed_layers(cfg, view.num_layers)
        shrunk = lst_init.side_config(view.config, cfg.reduction_factor)
        shrunk.attention_probs_dropout_prob = cfg.attention_dropout
        if view.family.causal:
            shrunk.attention_dropout = cfg.attention_dropout  # LLaMA family
            shrunk.attn_pdrop = cfg.attention_dropout  # GPT-2
        model = LadderSideNetwork(encoder, shrunk, feeds, ctx.label_names, pooling=cfg.pooling,
                                  gate_temperature=cfg.gate_temperature, classifier_dropout=cfg.classifier_dropout,
                                  gate_init=starting_gate(cfg, len(feeds)), final_merge=cfg.final_merge,
                                  lm_head=lm_head, lm_output=cfg.lm_output)
        model.to(ctx.device)
        std = getattr(view.config, "initializer_range", 0.02)
        lst_init.init_like_pretraining(model.downs, std)
        lst_init.init_like_pretraining(model.side_layers, std)
        lst_init.init_like_pretraining(model.upsample, std)
        if model.classifier is not None:
            lst_init.init_like_pretraining(model.classifier, std)
        if model.side_norm is not None:
            lst_init.init_like_pretraining(model.side_norm, std)
        if cfg.cache_hidden_states:
            model.cache = HiddenStateCache(cfg.cache_mb * 1024 * 1024)
        if ctx.restoring or ctx.shapes_only or cfg.init == "random":
            return start_from_backbone(model)  # restoring: the trained weights load over these; shapes only: no values
        if cfg.init == "fisher":
            if ctx.train_batches is None:
                raise ConfigError("Fisher initialisation needs the training set, which is not available here")
            ctx.progress(f"Fisher importance over {cfg.fisher_samples} training examples")
            scores = lst_init.fisher_scores(
                view, feeds, ctx.train_batches(), num_samples=cfg.fisher_samples, num_labels=len(ctx.label_names),
                pooling=model.pooling, seed=ctx.seed, progress=ctx.progress, lm_head=lm_head,
            )
        else:
            scores = lst_init.magnitude_scores(view, feeds)
        if model.rotary:
            _init_decoder_side(model, view, scores, feeds, cfg.reduction_factor)
            return start_from_backbone(model)
        indices = lst_init.choose_indices(scores, num_heads=view.config.num_attention_heads,
                                          reduction_factor=cfg.reduction_factor)
        for side_layer, backbone_index in zip(model.side_layers, feeds):
            # Side block k follows backbone layer feeds[k] (as in the official code, side block i
            # sits after backbone block i), so it starts as that layer, pruned.
            lst_init.copy_pruned_layer(view.family, view.layers[backbone_index], side_layer, indices.hidden,
                                       indices.heads[backbone_index], indices.ffn[backbone_index])
        if model.side_norm is not None:  # GPT-2's final LayerNorm, pruned
            final_norm = view.family.final_norm(view.model)
            with torch.no_grad():
                model.side_norm.weight.copy_(final_norm.weight[indices.hidden])
                model.side_norm.bias.copy_(final_norm.bias[indices.hidden])
        for down in model.downs:
            lst_init.selection_projection(down, indices.hidden)
        lst_init.selection_projection(model.upsample, indices.hidden, transpose=True)
        return start_from_backbone(model)

    def trainable_parameters(self, model: nn.Module):
        return model.side_parameters()

    def training_step(self, model: nn.Module, batch: dict, state: TrainState) -> StepOutput:
        model.record_stats = not state.shapes_only
        if has_token_labels(batch):
            hidden = model.token_states(**model_inputs(batch), example_index=batch.get("index"))
            return StepOutput(causal_lm_loss(hidden, model.backbone_head, batch["labels"]))
        logits = model(**model_inputs(batch), example_index=batch.get("index"))
        return StepOutput(F.cross_entropy(logits.float(), batch["labels"]), logits)

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        # No example index: evaluation splits have their own indices, so they never meet the cache.
        return model(**model_inputs(batch))

    def lm_outputs(self, model: nn.Module, batch: dict):
        return model.token_states(**model_inputs(batch)), model.backbone_head

    def step_telemetry(self, model: nn.Module, state: TrainState) -> dict | None:
        stats = model.last_stats
        if not stats:
            return None
        rows = torch.stack(stats["blocks"]).cpu().tolist()
        return {"lst": {
            "gates": [float(g) for g in stats["gates"].cpu().tolist()],
            **({"merge_gate": float(stats["merge_gate"].cpu())} if "merge_gate" in stats else {}),
            "layers": [{"mean": r[0], "std": r[1], "rms": r[2], "hist": [int(round(c)) for c in r[5:]]}
                       for r in rows],
            "hist_edges": list(HIST_EDGES),
            "side_norm": [r[3] for r in rows],
            "ladder_norm": [r[4] for r in rows],
            "backbone_layers": list(model.feeds),
        }}

    def eval_telemetry(self, model: nn.Module, batch: dict, state: TrainState) -> dict | None:
        if has_token_labels(batch):
            return None  # the side-feature map colours examples by class; a language model has none
        features = model.side_features(**model_inputs(batch)).float()
        points, explained = pca_2d(features)
        return {"lst_pca": {
            "points": [[round(x, PCA_DECIMALS), round(y, PCA_DECIMALS)] for x, y in points.tolist()],
            "labels": [int(v) for v in batch["labels"].tolist()],
            "label_names": list(model.label_names),
            "explained_variance": [float(v) for v in explained.tolist()],
        }}

    def run_summary(self, model: nn.Module) -> dict:
        summary = {
            "backbone_layers": list(model.feeds),
            "side_blocks": len(model.feeds),
            "gates": [float(g) for g in model.gates().detach().cpu().tolist()],
            "side_hidden_size": model.upsample.in_features,
            "init": self.config.init,
        }
        if model.merge_alpha is not None:
            summary["merge_gate"] = float(model.merge_gate().detach().cpu())
        if model.cache is not None:
            summary["hidden_state_cache"] = model.cache.summary()
            summary["hidden_state_cache"]["backbone_passes"] = model.backbone_passes
        return summary

    def export(self, model: nn.Module, out_dir: Path, ctx: BuildContext) -> dict:
        """The side network, ladders, gates and head as safetensors; the frozen backbone is only
        named (its weights reload from that backbone), which keeps the export a few MB."""
        state = {n: t for n, t in model.state_dict().items() if not n.startswith(("backbone.", "backbone_head."))}
        return save_lab_state(
            self, state, out_dir, ctx,
            "# Exported LST model\n\n"
            "`model.safetensors` holds the trained side network, ladder projections, gates, upsampling and "
            "classification head; the frozen backbone is not included: its weights load from backbone "
            f"`{ctx.backbone.name}` (named in `lab_config.json` with the settings and class names).\n"
            "Load it with this lab:\n\n"
            "    from app.export import load_exported\n    model = load_exported('PATH')\n",
        )


def start_from_backbone(model: LadderSideNetwork) -> LadderSideNetwork:
    """causal-lm with lm_output=residual: a zero upsampling makes step 0 write what the backbone writes."""
    if model.lm_output == "residual":
        with torch.no_grad():
            model.upsample.weight.zero_()
            model.upsample.bias.zero_()
    return model


def pca_2d(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection on the first two principal components and their share of the variance.

    Signs are fixed (largest loading positive) so successive evaluations do not flip the plot.
    """
    centred = features - features.mean(0, keepdim=True)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:2]
    if components.shape[0] < 2:  # fewer than two examples or one feature: pad with zeros
        components = torch.cat([components, components.new_zeros(2 - components.shape[0], components.shape[1])])
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    signs[signs == 0] = 1
    components = components * signs
    total = singular.pow(2).sum()
    explained = singular.pow(2)[:2] / total if total > 0 else torch.zeros(2)
    if explained.numel() < 2:
        explained = torch.cat([explained, explained.new_zeros(2 - explained.numel())])
    return centred @ components.T, explained


@torch.no_grad()
def _init_decoder_side(model: LadderSideNetwork, view: LayerStack, scores, feeds: list[int], r: int) -> None:
    """Prune a LLaMA-family backbone into the side network: layers, ladders, final norm and each
    side layer's rotary frequencies (see `lst_init`)."""
    config = view.config
    head_size = lst_init.head_size_of(config)
    shape = dict(num_heads=config.num_attention_heads, num_kv_heads=config.num_key_value_heads, head_size=head_size)
    indices = lst_init.choose_decoder_indices(scores, reduction_factor=r, **shape)
    for k, (side_layer, backbone_index) in enumerate(zip(model.side_layers, feeds)):
        lst_init.copy_pruned_decoder_layer(view.family, view.layers[backbone_index], side_layer, indices.hidden,
                                           indices.head_dims[backbone_index], indices.ffn[backbone_index], **shape)
        pairs = indices.rotary_pairs[backbone_index].to(model.side_inv_freq.device)
        model.side_inv_freq[k].copy_(view.model.rotary_emb.inv_freq.float()[pairs])
    model.side_norm.weight.copy_(view.family.final_norm(view.model).weight[indices.hidden])
    for down in model.downs:
        lst_init.selection_projection(down, indices.hidden)
    lst_init.selection_projection(model.upsample, indices.hidden, transpose=True)
