from __future__ import annotations

import json

from django import forms
from django.template.defaultfilters import filesizeformat

from . import catalog, rules
from .models import MAX_SEED, SCHEDULER_CHOICES, BaseModel, Generation, subjects_of, usable_subjects


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
        models, default = catalog.offered_with_default()
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


class GalleryFilterForm(forms.Form):
    """The gallery's filters, read from the query string. Training runs' validation samples are left
    out unless asked for: they are many, look alike, and their run's page shows them all."""

    q = forms.CharField(required=False, label="Search prompts")
    favourites = forms.BooleanField(required=False, label="★ Favourites only")
    training = forms.BooleanField(required=False, label="Show training samples")
    subject = forms.ModelChoiceField(queryset=None, required=False, empty_label="Any subject", widget=forms.Select(attrs={"aria-label": "Subject"}))
    base_model = forms.ModelChoiceField(queryset=None, required=False, empty_label="Any model", label="Model",
                                        widget=forms.Select(attrs={"aria-label": "Model"}))
    created_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    created_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, owner, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["subject"].queryset = subjects_of(owner).order_by("name")
        # the models this user's images were made with (offered or not any more)
        self.fields["base_model"].queryset = BaseModel.objects.filter(pk__in=Generation.objects.for_user(owner).values("base_model")).order_by("name")

    def clean(self) -> dict:
        data = super().clean()
        if data.get("created_from") and data.get("created_to") and data["created_from"] > data["created_to"]:
            self.add_error("created_to", "The end comes before the start.")
        return data

    def service_filters(self) -> dict:
        """Keyword arguments for services.filter_images (call after is_valid(); invalid fields are left out)."""
        data = getattr(self, "cleaned_data", {})
        return {
            "subject": data["subject"].pk if data.get("subject") else None,
            "base_model": data["base_model"].pk if data.get("base_model") else None,
            "created_from": data.get("created_from"), "created_to": data.get("created_to"),
            "training_samples": None if data.get("training") else False,
        }

    def is_narrowed(self) -> bool:
        """Whether anything but the defaults is chosen (the empty gallery says "no images match")."""
        data = getattr(self, "cleaned_data", {})
        return any(data.get(name) for name in ("q", "favourites", "subject", "base_model", "created_from", "created_to"))
