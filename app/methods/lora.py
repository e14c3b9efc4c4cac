"""LoRA (Hu et al., ICLR 2022) through the `peft` library: chosen projections of every layer get
a trainable low-rank update `ΔW = B·A·(alpha/r)`; the backbone stays frozen, the head trains.

B starts at zero, so training starts from the backbone. After training the update merges into
the weights (`merge_and_unload`) and the result is a plain transformers classifier again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..options import option
from ..tasks import CAUSAL_LM, TASKS
from .base import BuildContext, Method, MethodConfig
from .peft_support import (
    LAYER_ROLES,
    ROLE_HELP,
    export_with_adapter,
    extra_head_modules,
    layer_index,
    layer_module_pattern,
    layer_roles,
    wrap_with_peft,
)

TELEMETRY_KIND = "‖ΔW‖ (LoRA B·A·scale, Frobenius)"


@dataclass
class LoraSettings(MethodConfig):
    rank: int = option(8, "Rank r of each update B·A (the paper used 1 to 64).", min=1, max=1024)
    alpha: float = option(16.0, "Scale numerator: the update is multiplied by alpha / rank.", min=1e-6, max=1e6)
    dropout: float = option(0.05, "Dropout on the input of each LoRA update.", min=0.0, max=0.9)
    target_modules: list[str] = option(
        ["query", "value"], f"Projections of every layer that get an update: {ROLE_HELP}.",
        choices=list(LAYER_ROLES),
    )

    def validate(self) -> None:
        if not self.target_modules:
            raise ConfigError("'target_modules' needs at least one projection, e.g. query,value")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ConfigError(f"'target_modules' names a projection twice: {self.target_modules}")


def lora_update_norm(module) -> torch.Tensor:
    """‖B·A‖_F · scale of one LoRA layer, from r×r products: ‖BA‖²_F = Σ (BᵀB) ⊙ (AAᵀ)."""
    name = module.active_adapters[0]
    a = module.lora_A[name].weight.detach().float()  # r × d_in
    b = module.lora_B[name].weight.detach().float()  # d_out × r
    squared = ((b.T @ b) * (a @ a.T)).sum().clamp_min(0.0)
    return squared.sqrt() * module.scaling[name]


class Lora(Method):
    name = "lora"
    title = "LoRA"
    summary = ("Low-rank updates B·A on chosen projections of every layer (peft); the backbone stays frozen and "
               "the update merges into the weights for export.")
    Config = LoraSettings
    # The update starts at zero and is scaled by alpha/r; with a frozen backbone it needs a much
    # larger step than full fine-tuning (the paper used 4e-4..5e-4 on RoBERTa over many epochs).
    default_lr = 2e-3
    exports_plain_model = True
    backprop_crosses_frozen_backbone = True
    memory_grows_by_layer = True
    tasks = TASKS

    def check_compatible(self, backbone, label_names: list[str]) -> None:
        layer_roles(backbone.config.model_type)

    def build(self, ctx: BuildContext):
        from peft import LoraConfig, TaskType

        if ctx.task == CAUSAL_LM:
            # The LM head is the (tied) input embedding: frozen, as LoRA leaves every backbone weight.
            language_model = ctx.backbone.load_for_causal_lm()
            return wrap_with_peft(language_model, LoraConfig(
                task_type=TaskType.CAUSAL_LM, r=self.config.rank, lora_alpha=self.config.alpha,
                lora_dropout=self.config.dropout,
                target_modules=layer_module_pattern(language_model.config.model_type, self.config.target_modules)))
        classifier = ctx.backbone.load_for_classification(ctx.label_names)
        model_type = classifier.config.model_type
        peft_config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=self.config.rank,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout,
            target_modules=layer_module_pattern(model_type, self.config.target_modules),
            modules_to_save=extra_head_modules(classifier) or None,
        )
        return wrap_with_peft(classifier, peft_config)

    def step_telemetry(self, model: nn.Module, state) -> dict | None:
        from peft.tuners.lora import LoraLayer

        squared_by_layer: dict[int, list[torch.Tensor]] = {}
        for module_name, module in model.named_modules():
            if isinstance(module, LoraLayer) and module.active_adapters:
                index = layer_index(module_name)
                if index is not None:
                    squared_by_layer.setdefault(index, []).append(lora_update_norm(module).pow(2))
        if not squared_by_layer:
            return None
        layers = sorted(squared_by_layer)
        # one number per layer: the Frobenius norm of all that layer's updates taken together
        values = torch.stack([torch.stack(squared_by_layer[i]).sum().sqrt() for i in layers]).tolist()
        return {"updates": {"labels": [f"layer {i}" for i in layers], "values": values, "kind": TELEMETRY_KIND}}

    def inference_model(self, model: nn.Module) -> nn.Module:
        """A plain transformers classifier with the updates merged in (the trained model is kept)."""
        merged = copy.deepcopy(model).merge_and_unload()
        merged.eval()
        return merged

    def export(self, model: nn.Module, out_dir, ctx: BuildContext) -> dict:
        """Merged into the weights, and the unmerged updates as a peft adapter folder."""
        return export_with_adapter(self, model, out_dir, ctx, "the low-rank updates and the trained head")
