from __future__ import annotations

from django import forms

from . import rules
from .models import MAX_SEED, SCHEDULER_CHOICES, usable_subjects


class GenerateForm(forms.Form):
    """The generate page. Defaults follow the loaded model (imagesite.json or the SD 1.x defaults)."""

    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "autofocus": True}), max_length=rules.MAX_PROMPT_CHARS)
    negative_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False, max_length=rules.MAX_PROMPT_CHARS)
    seed = forms.IntegerField(required=False, min_value=0, max_value=MAX_SEED, help_text="Blank for a random seed.")
    steps = forms.IntegerField(min_value=rules.STEPS_RANGE[0], max_value=rules.STEPS_RANGE[1])
    guidance_scale = forms.FloatField(min_value=rules.GUIDANCE_RANGE[0], max_value=rules.GUIDANCE_RANGE[1], label="Guidance (CFG)")
    width = forms.IntegerField(widget=forms.NumberInput(attrs={"step": 8}))
    height = forms.IntegerField(widget=forms.NumberInput(attrs={"step": 8}))
    scheduler = forms.ChoiceField(choices=SCHEDULER_CHOICES)
    num_images = forms.IntegerField(min_value=rules.NUM_IMAGES_RANGE[0], max_value=rules.NUM_IMAGES_RANGE[1], label="Images")
    subject = forms.ModelChoiceField(queryset=None, required=False, empty_label="(none)", help_text="One of your trained subjects; put its token in the prompt.")

    def __init__(self, *args, owner, **kwargs):
        self.model_info = rules.current_model()
        super().__init__(*args, **kwargs)
        # Only the user's own trained subjects: another user's id is "not one of the choices".
        self.fields["subject"].queryset = usable_subjects(owner)
        for name, value in self.model_info.defaults().items():
            self.fields[name].initial = value
        for name in ("width", "height"):
            self.fields[name].widget.attrs.update(min=self.model_info.min_size, max=self.model_info.max_size)

    def clean_prompt(self) -> str:
        return rules.validate_prompt(self.cleaned_data["prompt"])

    def clean_width(self) -> int:
        return rules.validate_size(self.cleaned_data["width"], self.model_info)

    def clean_height(self) -> int:
        return rules.validate_size(self.cleaned_data["height"], self.model_info)
