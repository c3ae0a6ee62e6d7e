from __future__ import annotations

import json

from django import forms
from django.template.defaultfilters import filesizeformat

from . import catalog, rules
from .models import MAX_SEED, SCHEDULER_CHOICES, BaseModel, usable_subjects


class DataSelect(forms.Select):
    """A select whose options carry data-* attributes ({option value: {attribute: text}}), which the
    page's script reads (a base model's defaults, a subject's family)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.option_data: dict[str, dict[str, str]] = {}

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        option["attrs"].update(self.option_data.get(str(value), {}))
        return option


def model_choice_data(base_model: BaseModel) -> dict:
    """What the page needs to follow a base model when it is picked: its defaults, limits and presets."""
    info = base_model.info()
    return {
        "family": base_model.family, "defaults": info.defaults(), "min_size": info.min_size, "max_size": info.max_size,
        "presets": [list(size) for size in getattr(info, "aspect_presets", ())],
    }


class BaseModelField(forms.ModelChoiceField):
    def label_from_instance(self, obj: BaseModel) -> str:
        parts = [obj.name, obj.family_label or "unknown family"]
        if obj.size_bytes:
            parts.append(filesizeformat(obj.size_bytes))
        return " · ".join(parts)


class GenerateForm(forms.Form):
    """The generate page. Defaults, size limits and presets follow the chosen base model (the
    operator's default preselected); the page's script follows a change of model."""

    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "autofocus": True}), max_length=rules.MAX_PROMPT_CHARS)
    negative_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False, max_length=rules.MAX_PROMPT_CHARS)
    base_model = BaseModelField(queryset=BaseModel.objects.none(), required=False, empty_label=None, label="Base model", widget=DataSelect)
    seed = forms.IntegerField(required=False, min_value=0, max_value=MAX_SEED, help_text="Blank for a random seed.")
    steps = forms.IntegerField(min_value=rules.STEPS_RANGE[0], max_value=rules.STEPS_RANGE[1])
    guidance_scale = forms.FloatField(min_value=rules.GUIDANCE_RANGE[0], max_value=rules.GUIDANCE_RANGE[1], label="Guidance (CFG)")
    width = forms.IntegerField(widget=forms.NumberInput(attrs={"step": 8}))
    height = forms.IntegerField(widget=forms.NumberInput(attrs={"step": 8}))
    scheduler = forms.ChoiceField(choices=SCHEDULER_CHOICES)
    num_images = forms.IntegerField(min_value=rules.NUM_IMAGES_RANGE[0], max_value=rules.NUM_IMAGES_RANGE[1], label="Images")
    subject = forms.ModelChoiceField(queryset=None, required=False, empty_label="(none)", widget=DataSelect,
                                     help_text="One of your trained subjects; put its token in the prompt. Only those trained on the base model's family are offered.")

    def __init__(self, *args, owner, **kwargs):
        super().__init__(*args, **kwargs)
        models = list(catalog.offered_models())
        default = next((m for m in models if m.is_default), None) or catalog.default_model()
        self.fields["base_model"].queryset = BaseModel.objects.offered()
        self.base_model = self._chosen_base(models, default)
        self.fields["base_model"].initial = self.base_model.pk
        self.model_info = self.base_model.info()
        self.fields["base_model"].widget.option_data = {
            str(m.pk): {"data-model": json.dumps(model_choice_data(m))} for m in models
        }
        if len(models) < 2:
            self.fields["base_model"].widget = forms.HiddenInput()
        # Only the user's own trained subjects: another user's id is "not one of the choices". The
        # service refuses one trained on another family; the page hides those for the model picked.
        subjects = usable_subjects(owner)
        self.fields["subject"].queryset = subjects
        self.fields["subject"].widget.option_data = {str(s.pk): {"data-family": s.trained_family or ""} for s in subjects}
        for name, value in self.model_info.defaults().items():
            self.fields[name].initial = value
        for name in ("width", "height"):
            self.fields[name].widget.attrs.update(min=self.model_info.min_size, max=self.model_info.max_size)

    def _chosen_base(self, models: list[BaseModel], default: BaseModel) -> BaseModel:
        """The model the page is drawn for: the one posted or given as initial, else the default."""
        wanted = self.data.get(self.add_prefix("base_model")) if self.is_bound else self.initial.get("base_model")
        wanted = getattr(wanted, "pk", wanted)
        return next((m for m in models if str(m.pk) == str(wanted)), default)

    def clean_prompt(self) -> str:
        return rules.validate_prompt(self.cleaned_data["prompt"])

    def clean_width(self) -> int:
        return rules.validate_size(self.cleaned_data["width"], self.model_info)

    def clean_height(self) -> int:
        return rules.validate_size(self.cleaned_data["height"], self.model_info)
