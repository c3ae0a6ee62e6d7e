"""Training options: the web process judges and stores only what the user chose, without torch;
the worker decides the rest for the chosen method and its own GPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError

from training.dreambooth.devices import default_options_for
from training.dreambooth.options import method_defaults
from training.forms import TrainingForm
from training.rules import clean_training_options

ROOT = Path(__file__).resolve().parents[1]
# A hub id reads as an SD 1.x model (512 px) without any file: the SD-sized defaults.
SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_building_and_checking_the_training_form_leaves_torch_unimported(tiny_model, tmp_path):
    # A fresh interpreter: this test process has torch loaded by other tests already. The form lists
    # the base models, so it gets a database of its own. The SDXL defaults (the family read from
    # the folder) are torch-free too.
    script = (
        "import sys, django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('migrate', verbosity=0)\n"
        "import training.forms\n"
        "form = training.forms.TrainingForm()\n"
        "form.as_div()\n"
        "bound = training.forms.TrainingForm(data={'method': 'full', 'steps': 10, 'lora_rank': 4, 'num_class_images': 2,"
        " 'prior_loss_weight': 1, 'prior_target': 'base', 'mixed_precision': 'auto'})\n"
        "assert bound.is_valid(), bound.errors\n"
        "from training.dreambooth.options import method_defaults\n"
        "sdxl = method_defaults(sys.argv[1])\n"
        "assert (sdxl.family, sdxl.lora_rank, sdxl.train_text_encoder) == ('sdxl', 16, False), sdxl\n"
        "print(sorted(name for name in sys.modules if name == 'torch' or name.startswith(('torch.', 'diffusers'))))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "imagesite.settings", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    done = subprocess.run([sys.executable, "-c", script, str(tiny_model("sdxl"))], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_nothing_chosen_stores_nothing_and_the_worker_uses_the_full_fine_tunes_rate():
    assert clean_training_options("full", {}) == {}
    lora_rate = default_options_for(settings.IMAGESITE_MODEL, method="lora").learning_rate
    full_rate = default_options_for(settings.IMAGESITE_MODEL, method="full", **clean_training_options("full", {})).learning_rate
    assert full_rate == 1e-4 and lora_rate == 3e-4
    # On SD-sized models the gap is 20x: diffusers' DreamBooth rate for a full fine-tune.
    assert default_options_for(SD_MODEL, method="full").learning_rate == 5e-6
    assert default_options_for(SD_MODEL, method="lora").learning_rate == 1e-4
    # A rate the user chose wins over the method's.
    chosen = clean_training_options("full", {"learning_rate": 2e-5, "seed": None})
    assert chosen == {"learning_rate": 2e-5}
    assert default_options_for(SD_MODEL, method="full", **chosen).learning_rate == 2e-5


def test_the_gpu_decides_the_machine_defaults_on_the_worker_unless_the_user_chose(monkeypatch):
    import torch

    # No GPU here: is_available is patched to answer as a GPU worker's would.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu = default_options_for(SD_MODEL, method="lora")
    assert on_gpu.mixed_precision == "fp16" and on_gpu.gradient_checkpointing
    chosen = default_options_for(SD_MODEL, method="lora", mixed_precision="no", gradient_checkpointing=False)
    assert chosen.mixed_precision == "no" and not chosen.gradient_checkpointing
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu = default_options_for(SD_MODEL, method="lora")
    assert on_cpu.mixed_precision == "no" and not on_cpu.gradient_checkpointing and not on_cpu.use_8bit_adam
    # The web process's defaults never depend on its own hardware.
    assert method_defaults(SD_MODEL).mixed_precision == "no" and not method_defaults(SD_MODEL).gradient_checkpointing


@pytest.mark.parametrize(("method", "chosen", "field"), [
    ("lora", {"num_class_images": 0}, "num_class_images"),  # prior preservation is on by default
    ("full", {"prior_preservation": True, "num_class_images": 0}, "num_class_images"),
    ("lora", {"steps": 0}, "steps"),
    ("lora", {"steps": True}, "steps"),
    ("lora", {"learning_rate": 1.0}, "learning_rate"),
    ("lora", {"mixed_precision": "fp8"}, "mixed_precision"),
    ("lora", {"prior_target": "teacher"}, "prior_target"),
    ("lora", {"gradient_checkpointing": "yes"}, "gradient_checkpointing"),
    ("lora", {"negtive_prompt": "x"}, "negtive_prompt"),
    ("dora", {}, "method"),
])
def test_a_bad_choice_is_refused_naming_its_field(method, chosen, field):
    with pytest.raises(ValidationError) as refused:
        clean_training_options(method, chosen)
    assert list(refused.value.message_dict) == [field]


def test_prior_preservation_off_needs_no_class_images():
    assert clean_training_options("lora", {"prior_preservation": False, "num_class_images": 0}) == {
        "prior_preservation": False, "num_class_images": 0,
    }


def _page_data(**changes) -> dict:
    """What the page posts when nothing is touched: every field's initial value."""
    form = TrainingForm()
    data = {name: field.initial for name, field in form.fields.items() if field.initial not in (None, False)}
    return {**data, **changes}


def test_the_form_shows_auto_for_what_the_gpu_decides_and_stores_nothing_for_it(db):  # the form lists the base models
    form = TrainingForm()
    assert form.fields["mixed_precision"].initial == "auto" and form.fields["gradient_checkpointing"].initial == "auto"
    assert "auto (decided by the worker&#x27;s GPU)" in form.as_div()
    bound = TrainingForm(data=_page_data(method="full"))
    assert bound.is_valid(), bound.errors
    stored = bound.options()
    assert not {"mixed_precision", "gradient_checkpointing", "use_8bit_adam", "learning_rate", "seed"} & set(stored)
    # Values left as the page showed them are the model's defaults, not choices: the page stores what
    # the API stores for {"method": "full"}, and the worker trains at the full fine-tune's rate.
    assert stored == clean_training_options("full", {}) == {}
    changed = TrainingForm(data=_page_data(method="full", steps=7))
    assert changed.is_valid() and changed.options() == {"steps": 7}


def test_the_form_stores_the_gpu_switches_the_user_set(db):  # the form lists the base models
    bound = TrainingForm(data=_page_data(mixed_precision="bf16", gradient_checkpointing="off", use_8bit_adam="on"))
    assert bound.is_valid(), bound.errors
    assert {k: bound.options()[k] for k in ("mixed_precision", "gradient_checkpointing", "use_8bit_adam")} == {
        "mixed_precision": "bf16", "gradient_checkpointing": False, "use_8bit_adam": True,
    }


def test_the_form_passes_the_choice_on_and_the_service_refuses_it_on_the_field(db):  # the form lists the base models
    bound = TrainingForm(data=_page_data(prior_preservation="on", num_class_images=0))
    assert bound.is_valid(), bound.errors  # the form only translates; training.services judges (tests/test_service_rules.py)
    assert bound.options()["num_class_images"] == 0
    with pytest.raises(ValidationError) as refused:
        clean_training_options("lora", bound.options())
    assert refused.value.message_dict["num_class_images"] == ["Prior preservation needs at least one class image."]
