"""Houlsby adapters (Houlsby et al., ICML 2019): a small bottleneck after the attention block and
after the feed-forward block of every layer; only the adapters and the classification head train.

Each adapter is `h + up(act(down(h)))`. Initialisation, a stated choice: the down-projection is
drawn as in the reference code (truncated normal, std 1e-3, cut at two standard deviations; zero
bias), but the up-projection starts at zero where the reference draws it from the same
distribution. With std 1e-3 on both the reference's adapters add about 1e-6 of the input, so
its start is already the identity to within rounding; a zero up-projection makes that exact (the
adapted model starts out computing what the backbone computes), and since its gradient does not
depend on its own value, the first step moves it just as it would move the reference's.

As in the reference, the backbone's layer norms train with the adapters by default
(`train_layer_norms`).

Placement follows the paper's reference code (google-research/adapter-bert): the adapter sits
after a sublayer's output projection and dropout, before the residual sum and layer norm. Every
supported architecture has a dropout module in exactly that spot (BERT/RoBERTa/ELECTRA:
`attention.output.dropout` and `output.dropout`; MPNet: `attention.dropout` and `output.dropout`),
so the adapter is installed by replacing that dropout module with dropout-then-adapter. GPT-2 has
the same spots (`attn.resid_dropout`, `mlp.dropout`). LLaMA-family decoders have no dropout module
there: the adapter becomes a child of the attention block and of the MLP (`self_attn.adapter`,
`mlp.adapter`) and a forward hook passes each block's output through it, before the residual sum,
which is the same place. The frozen projections keep their names and types, which keeps head
pruning and dynamic quantization of the result working.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..layer_stack import LayerStack
from ..options import option
from ..tasks import CAUSAL_LM, TASKS
from .base import BuildContext, Method, MethodConfig
from .peft_support import head_parameter_names

ACTIVATIONS = ("gelu", "relu", "tanh", "silu")
DOWN_INIT_STD = 1e-3  # the reference's init scale; the up-projection starts at zero (see above)
TELEMETRY_KIND = "adapter output RMS"


@dataclass
class AdapterConfig(MethodConfig):
    bottleneck: int = option(
        64, "Width of every adapter's bottleneck (the paper used 8 to 256); sets the trainable size.",
        min=1, max=4096,
    )
    activation: str = option("gelu", "Nonlinearity inside the bottleneck.", choices=list(ACTIVATIONS))
    train_layer_norms: bool = option(
        True, "Also train the backbone's layer norms (every LayerNorm or RMSNorm, embeddings' included), as "
        "Houlsby et al.'s reference code does; a few thousand more weights.",
    )


class BottleneckAdapter(nn.Module):
    """`h + up(act(down(h)))`, starting as the identity."""

    def __init__(self, hidden_size: int, bottleneck: int, activation: str, layer_index: int):
        super().__init__()
        from transformers.activations import ACT2FN

        self.down = nn.Linear(hidden_size, bottleneck)
        self.activation = ACT2FN[activation]
        self.up = nn.Linear(bottleneck, hidden_size)
        self.layer_index = layer_index
        # Mean square of the adapter's own contribution in the last training forward pass,
        # kept as a detached 0-d tensor so telemetry costs no extra pass and no sync per call.
        self.last_mean_square: torch.Tensor | None = None
        nn.init.trunc_normal_(self.down.weight, std=DOWN_INIT_STD, a=-2 * DOWN_INIT_STD, b=2 * DOWN_INIT_STD)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        update = self.up(self.activation(self.down(hidden)))
        if self.training:
            self.last_mean_square = update.detach().float().pow(2).mean()
        return hidden + update


class DropoutThenAdapter(nn.Module):
    """Takes the place of a sublayer's output dropout: the dropout, then the adapter."""

    def __init__(self, dropout: nn.Dropout, adapter: BottleneckAdapter):
        super().__init__()
        self.dropout = dropout
        self.adapter = adapter

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.dropout(hidden))


class AdapterClassifier(nn.Module):
    """The backbone classifier with adapters installed; `forward(**inputs)` gives its output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        return self.model(**inputs)

    def get_base_model(self) -> nn.Module:
        """The adapted transformers model (what a causal-lm step reads its states and LM head from)."""
        return self.model

    def adapters(self) -> list[BottleneckAdapter]:
        return [m for m in self.modules() if isinstance(m, BottleneckAdapter)]


def check_adapter_places(family) -> None:
    if not (family.adapter_after_dropouts or family.adapter_after_blocks):
        raise ConfigError(f"adapters are not available for {family.title}s: the lab does not know where their "
                          "layers' attention and feed-forward outputs are")


def _adapt_block_output(block: nn.Module, args: tuple, output):
    if isinstance(output, tuple):  # attention blocks return (output, attention weights)
        return (block.adapter(output[0]), *output[1:])
    return block.adapter(output)


def install_adapters(classifier: nn.Module, config: AdapterConfig) -> list[BottleneckAdapter]:
    view = LayerStack(classifier)
    family, hidden_size = view.family, view.config.hidden_size
    check_adapter_places(family)
    installed = []
    for index, layer in enumerate(view.layers):
        for block_path in family.adapter_after_blocks:
            block = layer.get_submodule(block_path)
            block.adapter = BottleneckAdapter(hidden_size, config.bottleneck, config.activation, index)
            # a module-level hook that finds its adapter on the block: deep copies keep working
            block.register_forward_hook(_adapt_block_output)
            installed.append(block.adapter)
        for slot in family.adapter_after_dropouts:
            parent_path, _, attribute = slot.rpartition(".")
            parent = layer.get_submodule(parent_path)
            dropout = getattr(parent, attribute, None)
            if not isinstance(dropout, nn.Dropout):
                raise ConfigError(
                    f"layer {index} of this {view.model_type} backbone has no dropout at '{slot}' to place an "
                    "adapter after; its layout differs from the supported transformers version"
                )
            adapter = BottleneckAdapter(hidden_size, config.bottleneck, config.activation, index)
            setattr(parent, attribute, DropoutThenAdapter(dropout, adapter))
            installed.append(adapter)
    return installed


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, or the RMSNorm of LLaMA-family decoders (each model defines its own class)."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


class HoulsbyAdapters(Method):
    name = "adapter"
    title = "Adapters (Houlsby)"
    summary = ("A small bottleneck after attention and after the feed-forward block of every layer; only the "
               "adapters and the head train, but backpropagation still runs through the whole backbone.")
    Config = AdapterConfig
    # New randomly initialised modules on a frozen backbone: 1e-4 (the paper's range is 1e-5..1e-3
    # over many epochs) barely moves them in a short CPU run.
    default_lr = 1e-3
    exports_plain_model = False
    backprop_crosses_frozen_backbone = True
    memory_grows_by_layer = True
    tasks = TASKS

    def check_compatible(self, backbone, label_names: list[str]) -> None:
        check_adapter_places(backbone.family)
        hidden = backbone.config.hidden_size
        if self.config.bottleneck > hidden:
            raise ConfigError(
                f"bottleneck {self.config.bottleneck} is wider than the backbone's hidden size ({hidden}); "
                f"choose at most {hidden} (the paper used 8 to 256 on hidden size 768)"
            )

    def build(self, ctx: BuildContext) -> AdapterClassifier:
        if ctx.task == CAUSAL_LM:  # no new head: the LM head is the backbone's, frozen
            classifier, head = ctx.backbone.load_for_causal_lm(), set()
        else:
            classifier = ctx.backbone.load_for_classification(ctx.label_names)
            head = head_parameter_names(classifier)
        layer_norms = {
            f"{module_name}.{parameter_name}"
            for module_name, module in classifier.named_modules() if is_norm(module)
            for parameter_name, _ in module.named_parameters(recurse=False)
        } if self.config.train_layer_norms else set()
        for name, parameter in classifier.named_parameters():
            parameter.requires_grad_(name in head or name in layer_norms)
        install_adapters(classifier, self.config)  # adapters are created trainable
        return AdapterClassifier(classifier)

    def step_telemetry(self, model: AdapterClassifier, state) -> dict | None:
        by_layer: dict[int, list[torch.Tensor]] = {}
        for adapter in model.adapters():
            if adapter.last_mean_square is not None:
                by_layer.setdefault(adapter.layer_index, []).append(adapter.last_mean_square)
        if not by_layer:
            return None
        layers = sorted(by_layer)
        values = torch.stack([torch.stack(by_layer[i]).mean().sqrt() for i in layers]).tolist()
        return {"updates": {"labels": [f"layer {i}" for i in layers], "values": values, "kind": TELEMETRY_KIND}}
