"""``python manage.py export_single_file OUT.safetensors [--model FOLDER]``: the model as one file.

Writes the original layout of the model's family (SD 1.x, SD 2.x, SDXL) that AUTOMATIC1111, ComfyUI and
diffusers' ``from_single_file`` read.
With a single file as ``--model`` (an old ``model_trained.ckpt``), its tensors are re-saved as they
are: the way to turn a pickled ``.ckpt`` into a ``.safetensors`` imagesite loads without unpickling.
"""
from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from generation.modelinfo import model_kind


class Command(BaseCommand):
    help = "Export a diffusers SD 1.x, SD 2.x or SDXL model (the demo, a fine-tune) or a .ckpt as one .safetensors/.ckpt file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("out", help="file to write: .safetensors (recommended) or .ckpt")
        parser.add_argument("--model", default=None, help="diffusers folder or single file (default: IMAGESITE_MODEL)")
        parser.add_argument(
            "--finetune", default=None,
            help="a full DreamBooth fine-tune's folder (unet/, text_encoder/) to apply over a --model folder",
        )
        parser.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
        parser.add_argument(
            "--trust-pickle", action="store_true",
            help="read a .ckpt with plain torch.load, which runs code pickled in it: only for files you trust",
        )

    def handle(self, *args, **opts) -> None:
        from generation.checkpoint_convert import save_single_file
        from generation.pipeline import GenerationError
        from generation.single_file import resave_single_file

        source = opts["model"] or settings.IMAGESITE_MODEL
        out = Path(opts["out"])
        if out.suffix.lower() not in (".safetensors", ".ckpt"):
            raise CommandError(f"{out.name}: the output must end in .safetensors or .ckpt.")
        if Path(source).resolve() == out.resolve():
            raise CommandError("The output would overwrite the model it is made from.")
        kind = model_kind(source)
        try:
            if kind == "folder":
                save_single_file(source, out, half=opts["half"], finetune=opts["finetune"])
            elif opts["finetune"]:
                raise CommandError("--finetune applies to a diffusers --model folder.")
            elif kind == "single_file" and Path(source).is_file():
                resave_single_file(source, out, trust_pickle=opts["trust_pickle"], half=opts["half"])
            else:
                raise CommandError(f"{source} is neither a local diffusers folder nor a model file (nothing is downloaded).")
        except (GenerationError, ValueError, OSError, ImportError) as exc:  # ImportError: a trusted pickle needs a missing module
            raise CommandError(str(exc)) from exc
        size_mb = out.stat().st_size / 1e6
        self.stdout.write(self.style.SUCCESS(f"wrote {out} ({size_mb:.1f} MB) from {source}"))
