from __future__ import annotations

from django import forms

from generation import catalog
from generation.forms import BaseModelField
from generation.models import BaseModel

from . import rules
from .dreambooth.options import MACHINE_FIELDS, method_defaults
from .models import Subject, TrainingMethod
from .photos import content_sha256


class SubjectForm(forms.ModelForm):
    """The fields as sent (required, lengths): training.services.create_subject judges them (the
    class noun and token rules, names and tokens taken) and the view shows its refusals on the fields."""

    class Meta:
        model = Subject
        fields = ("name", "class_noun", "token")
        help_texts = {"token": "A rare word that will stand for your subject in prompts, e.g. “a photo of sks person”."}

    def __init__(self, *args, owner, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["token"].initial = rules.suggest_token(set(Subject.objects.for_user(owner).values_list("token", flat=True)))


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """A list of uploaded files, passed on unjudged: training.photos checks each one and gives each
    bad file its own reason, so one bad file never sinks the good ones."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"multiple": True, "accept": "image/jpeg,image/png,image/webp"}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        files = [f for f in (data if isinstance(data, (list, tuple)) else [data]) if f]
        if not files:
            raise forms.ValidationError("Choose at least one photo.", code="required")
        return files


class PhotoUploadForm(forms.Form):
    """Several photos in one go. The same file chosen twice (same bytes, whatever its name) is kept
    once: `duplicates` lists the names of the copies left out. Each kept file carries its SHA-256
    as `content_sha256` (hashing reads the bytes; nothing is decoded here)."""

    photos = MultipleFileField()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.duplicates: list[str] = []

    def clean_photos(self) -> list:
        self.duplicates = []
        kept, seen = [], set()
        for file in self.cleaned_data["photos"]:
            file.content_sha256 = content_sha256(file)
            if file.content_sha256 in seen:
                self.duplicates.append(file.name or "a photo")
                continue
            seen.add(file.content_sha256)
            kept.append(file)
        return kept


class CaptionsForm(forms.Form):
    """One caption field per photo (`caption_<photo id>`), saved together; training.services checks them."""

    def __init__(self, *args, subject: Subject, photos, **kwargs):
        super().__init__(*args, **kwargs)
        self.photos = list(photos)
        fallback = f"a photo of {subject.token} {subject.class_noun}"
        for photo in self.photos:
            self.fields[self.field_name(photo.pk)] = forms.CharField(
                required=False, max_length=rules.CAPTION_MAX_LENGTH, initial=photo.caption, label=f"Caption of {photo.original_name or 'the photo'}",
                widget=forms.Textarea(attrs={"form": "captions", "placeholder": fallback, "rows": 2}),
            )

    @staticmethod
    def field_name(photo_pk: int) -> str:
        return f"caption_{photo_pk}"

    def rows(self) -> list[tuple]:
        return [(photo, self[self.field_name(photo.pk)]) for photo in self.photos]

    def captions(self) -> dict[int, str]:
        """The captions sent; a photo added since the page was drawn (no field sent) keeps its own."""
        return {photo.pk: self.cleaned_data[self.field_name(photo.pk)] for photo in self.photos if self.field_name(photo.pk) in self.data}

    def add_service_errors(self, errors: dict[str, list[str]]) -> None:
        """The per-photo messages of services.set_captions, each on its photo's field."""
        for pk, messages in errors.items():
            for message in messages:
                self.add_error(self.field_name(int(pk)), message)


AUTO = "auto"
AUTO_LABEL = "auto (decided by the worker's GPU)"


class AutoSwitchField(forms.TypedChoiceField):
    """A switch whose default depends on the GPU that trains: "auto" (the initial: nothing is
    stored, the worker decides), "on" or "off"; cleaned to None, True or False."""

    def __init__(self, **kwargs):
        choices = [(AUTO, AUTO_LABEL), ("on", "on"), ("off", "off")]
        super().__init__(choices=choices, coerce={"on": True, "off": False}.get, empty_value=None, required=False, initial=AUTO, **kwargs)


class TrainingForm(forms.Form):
    """Start a run: the defaults fit the base model; the rest are the advanced options.

    The page shows the model's defaults (torch-free: `method_defaults` reads its config files);
    what the machine decides (fp16, gradient checkpointing, 8-bit Adam) shows as "auto". The
    service judges the choices (`rules.clean_training_options`), as it does the API's.
    """

    base_model = BaseModelField(queryset=BaseModel.objects.none(), required=False, empty_label=None, label="Base model",
                                help_text="The subject works in generations with base models of this one's family.")
    method = forms.ChoiceField(choices=TrainingMethod.choices, initial=TrainingMethod.LORA)
    steps = forms.IntegerField(min_value=rules.STEPS_RANGE[0], max_value=rules.STEPS_RANGE[1])
    # Blank: the chosen method's own default (a full fine-tune needs a lower rate than a LoRA).
    learning_rate = forms.FloatField(min_value=rules.LEARNING_RATE_RANGE[0], max_value=rules.LEARNING_RATE_RANGE[1], required=False)
    lora_rank = forms.IntegerField(min_value=rules.RANK_RANGE[0], max_value=rules.RANK_RANGE[1], label="LoRA rank")
    train_text_encoder = forms.BooleanField(required=False, help_text="Also give the text encoder a LoRA (on the demo model it did not raise likeness on average).")
    prior_preservation = forms.BooleanField(required=False, help_text="Keeps what the class looks like in general.")
    num_class_images = forms.IntegerField(min_value=rules.CLASS_IMAGES_RANGE[0], max_value=rules.CLASS_IMAGES_RANGE[1], label="Class images")
    prior_loss_weight = forms.FloatField(min_value=rules.PRIOR_LOSS_WEIGHT_RANGE[0], max_value=rules.PRIOR_LOSS_WEIGHT_RANGE[1])
    prior_target = forms.ChoiceField(
        # Short labels: a select shows its choice on one line, and a phone has ~300 px for it.
        choices=[("base", "the base model's prediction"), ("images", "class images (classic DreamBooth)")],
        label="Prior target", help_text="What the class images are trained towards; the base model's prediction keeps other prompts as they were.",
    )
    train_token_embedding = forms.BooleanField(
        required=False, label="Learn the token's embedding",
        help_text="Pivotal tuning: the rare token gets its own learnt meaning; only prompts with it change.",
    )
    gradient_checkpointing = AutoSwitchField(help_text="auto: on with a GPU for SD-sized models.")
    mixed_precision = forms.ChoiceField(
        choices=[(AUTO, AUTO_LABEL), ("no", "no (float32)"), ("fp16", "fp16 (GPU)"), ("bf16", "bf16 (GPU)")],
        required=False, initial=AUTO, help_text="auto: fp16 with a GPU for SD-sized models, else float32.",
    )
    use_8bit_adam = AutoSwitchField(label="8-bit Adam (GPU + bitsandbytes)", help_text="auto: on with a GPU and bitsandbytes for SD-sized models.")
    seed = forms.IntegerField(min_value=rules.SEED_RANGE[0], max_value=rules.SEED_RANGE[1], required=False, help_text="Blank: the default seed.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Trainable bases: offered ones with files here (a hub id is not) that are not inpainting models.
        offered, default = catalog.offered_with_default()
        bases = [m for m in offered if rules.untrainable_reason(m) is None]
        self.fields["base_model"].queryset = BaseModel.objects.filter(pk__in=[m.pk for m in bases])
        self.fields["base_model"].initial = default.pk
        if len(bases) < 2:
            self.fields["base_model"].widget = forms.HiddenInput()
        # The defaults shown are the default base's; the worker resolves them for the base chosen.
        self.base_source = default.path
        if self.is_bound:
            chosen = next((m for m in bases if str(m.pk) == str(self.data.get(self.add_prefix("base_model")))), None)
            self.base_source = chosen.path if chosen else self.base_source
        self.defaults = method_defaults(self.base_source, TrainingMethod.LORA)
        for name, field in self.fields.items():
            if name not in ("method", "learning_rate") and name not in MACHINE_FIELDS and hasattr(self.defaults, name):
                field.initial = getattr(self.defaults, name)
        full_rate = method_defaults(self.base_source, TrainingMethod.FULL).learning_rate
        rate = self.fields["learning_rate"]
        rate.widget.attrs["placeholder"] = "default"
        rate.help_text = f"Blank: the method's default (LoRA {self.defaults.learning_rate:g}, full {full_rate:g})."

    def options(self) -> dict:
        """What the user chose on the page, without the blank and "auto" values and those left as
        shown: training.services.start_training judges them (rules.clean_training_options) and the
        view shows its refusals on the fields; the worker decides the rest for the method and its GPU."""
        # A value left as the page showed it is the model's default, not a choice: it is not passed on,
        # so the page and the API (which sends only what it sets) store the same options.
        return {name: value for name, value in self.cleaned_data.items()
                if name not in ("method", "base_model") and value not in (None, "", AUTO) and value != self.fields[name].initial}
