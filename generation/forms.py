from __future__ import annotations

import json

from django import forms
from django.core.files.base import ContentFile
from django.template.defaultfilters import filesizeformat

from . import catalog, rules
from .models import MAX_SEED, SCHEDULER_CHOICES, BaseModel, GeneratedImage, Generation, HiresUpscaler, subjects_of, usable_subjects


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


# What a blank optional field means: the model's defaults (which the service would pick too).
INPUT_DEFAULTS = {name: Generation._meta.get_field(name).default
                  for name in ("strength", "mask_blur", "hires_scale", "hires_upscaler", "hires_strength", "hires_steps")}
UPSCALE_STRENGTH = 0.3  # "Upscale" on an image: enlarge and sharpen, keep the picture


class GenerateForm(forms.Form):
    """The generate page. Defaults, size limits and presets follow the chosen base model (the
    operator's default preselected); the page's script follows a change of model."""

    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "autofocus": True}), max_length=rules.MAX_PROMPT_CHARS)
    negative_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False, max_length=rules.MAX_PROMPT_CHARS)
    base_model = BaseModelField(queryset=BaseModel.objects.none(), required=False, empty_label=None, label="Base model", widget=DataSelect)
    seed = forms.IntegerField(required=False, min_value=0, max_value=MAX_SEED, help_text="Blank for a random seed.")
    steps = forms.IntegerField(min_value=rules.STEPS_RANGE[0], max_value=rules.STEPS_RANGE[1])
    guidance_scale = forms.FloatField(min_value=rules.GUIDANCE_RANGE[0], max_value=rules.GUIDANCE_RANGE[1], label="Guidance (CFG)")
    # Blank: the model's native size, or the input image's size when there is one.
    width = forms.IntegerField(required=False, widget=forms.NumberInput(attrs={"step": 8}))
    height = forms.IntegerField(required=False, widget=forms.NumberInput(attrs={"step": 8}))
    scheduler = forms.ChoiceField(choices=SCHEDULER_CHOICES)
    num_images = forms.IntegerField(min_value=rules.NUM_IMAGES_RANGE[0], max_value=rules.NUM_IMAGES_RANGE[1], label="Images")
    # Kept for links and jobs from before LoRA tags (?subject=, "generate again"): the page now inserts
    # <lora:token:1> into the prompt instead, so the field travels hidden.
    subject = forms.ModelChoiceField(queryset=None, required=False, widget=forms.HiddenInput)
    # img2img / inpainting: an upload, or one of the user's gallery images (?source_image=, "Use as input").
    init_image = forms.FileField(required=False, label="Input image", widget=forms.ClearableFileInput(attrs={"accept": "image/png,image/jpeg,image/webp"}),
                                  help_text="Start from this image instead of noise (img2img). Blank width/height: its size.")
    source_image = forms.ModelChoiceField(queryset=None, required=False, widget=forms.HiddenInput)
    # The page after a job whose input was an upload: that job's stored input is used again unless
    # another is chosen (a browser cannot refill a file input).
    input_job = forms.ModelChoiceField(queryset=None, required=False, widget=forms.HiddenInput)
    strength = forms.FloatField(required=False, min_value=rules.STRENGTH_RANGE[0], max_value=rules.STRENGTH_RANGE[1], label="Denoising strength",
                                widget=forms.NumberInput(attrs={"type": "range", "step": 0.01}),
                                help_text="0 keeps the input, 1 ignores it.")
    mask = forms.FileField(required=False, widget=forms.ClearableFileInput(attrs={"accept": "image/png"}),
                            help_text="Inpainting: white is repainted, black kept; the input's size. Or paint it below.")
    mask_blur = forms.IntegerField(required=False, min_value=rules.MASK_BLUR_RANGE[0], max_value=rules.MASK_BLUR_RANGE[1], label="Mask blur (px)")
    hires_scale = forms.FloatField(required=False, min_value=rules.HIRES_SCALE_RANGE[0], max_value=rules.HIRES_SCALE_RANGE[1], label="Upscale by",
                                   widget=forms.NumberInput(attrs={"step": 0.05}), help_text="1 = off.")
    hires_upscaler = forms.ChoiceField(required=False, choices=HiresUpscaler.choices, label="Upscaler")
    hires_strength = forms.FloatField(required=False, min_value=rules.STRENGTH_RANGE[0], max_value=rules.STRENGTH_RANGE[1], label="Hires strength",
                                      widget=forms.NumberInput(attrs={"step": 0.05}))
    hires_steps = forms.IntegerField(required=False, min_value=0, max_value=rules.STEPS_RANGE[1], label="Hires steps",
                                     help_text="0 = as many as Steps.")

    # The page draws the form in these groups (the rest are hidden fields).
    SETTINGS = ("base_model", "seed", "steps", "guidance_scale", "width", "height", "scheduler", "num_images")
    INPUT = ("init_image", "strength", "mask", "mask_blur")
    HIRES = ("hires_scale", "hires_upscaler", "hires_strength", "hires_steps")

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
        self.subjects = usable_subjects(owner)
        self.fields["subject"].queryset = self.subjects
        self.fields["source_image"].queryset = GeneratedImage.objects.for_user(owner)
        self.fields["input_job"].queryset = Generation.objects.for_user(owner).exclude(init_image="")
        for name, value in {**self.model_info.defaults(), **INPUT_DEFAULTS}.items():
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

    def clean_width(self) -> int | None:
        value = self.cleaned_data["width"]
        return None if value is None else rules.validate_size(value, self.model_info)

    def clean_height(self) -> int | None:
        value = self.cleaned_data["height"]
        return None if value is None else rules.validate_size(value, self.model_info)

    def clean(self) -> dict:
        data = super().clean()
        for name, default in INPUT_DEFAULTS.items():
            if data.get(name) in (None, "") and name not in self.errors:
                data[name] = default
        if data.get("init_image") and data.get("source_image"):
            data["source_image"] = None  # a file chosen on the page replaces the gallery image it started from
        if data.get("init_image") or data.get("source_image"):
            data["input_job"] = None
        elif job := data.get("input_job"):
            try:  # bytes only, no pixel decoded: the service checks them as it checks an upload
                with job.init_image.open("rb") as f:
                    data["init_image"] = ContentFile(f.read(), name="input")
            except OSError:
                self.add_error("input_job", "That job's input image is gone; choose an input again.")
        return data

    def service_kwargs(self) -> dict:
        """Keyword arguments for services.create_generation (after is_valid()). Inputs not given are
        left out, so a service without img2img keeps working; blank sizes are the service's to fill."""
        data = dict(self.cleaned_data)
        data.pop("input_job", None)  # read into init_image by clean()
        for name in ("init_image", "source_image", "mask"):
            if not data.get(name):
                data.pop(name, None)
        return data

    def chosen(self, name: str):
        """The row a hidden choice field names (posted or initial), when it is in the field's queryset (the user's)."""
        value = self[name].value()
        value = getattr(value, "pk", value)
        return self.fields[name].queryset.filter(pk=value).first() if str(value or "").isdigit() else None

    def hires_open(self) -> bool:
        """Whether the page shows the hires section open: it is in use, or has an error."""
        if any(self[name].errors for name in self.HIRES):
            return True
        try:
            return float(self["hires_scale"].value() or 1) != 1
        except (TypeError, ValueError):
            return True

    def groups(self) -> dict[str, list]:
        """The fields of each section of the page (bound fields)."""
        groups = {"settings": self.SETTINGS, "input": self.INPUT, "hires": self.HIRES}
        return {group: [self[n] for n in names if not self[n].is_hidden] for group, names in groups.items()}


def initial_from_job(job: Generation, image: GeneratedImage | None = None) -> dict:
    """Generate-form values from a job: its settings ("generate again", the page after submitting),
    including its input image when that was a gallery image still there."""
    initial = job.form_initial(image)
    initial.update({name: getattr(job, name) for name in INPUT_DEFAULTS})
    if job.source_image_id and GeneratedImage.objects.filter(pk=job.source_image_id).exists():
        initial["source_image"] = job.source_image_id
    elif job.init_image:
        initial["input_job"] = job.pk
    return initial


def upscaled_size(width: int, height: int, info, factor: float = 2.0) -> tuple[int, int]:
    """`factor` times the size, capped so both sides stay within the model's maximum, each side a
    multiple of 8 (the aspect kept as closely as those allow)."""
    factor = min(factor, info.max_size / width, info.max_size / height)
    return tuple(max(info.min_size, int(side * factor) // 8 * 8) for side in (width, height))


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
