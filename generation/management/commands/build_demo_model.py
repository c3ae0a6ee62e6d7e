"""``python manage.py build_demo_model``: rebuild the embedded demo model from scratch (issue 3).

A thin wrapper around :mod:`generation.demo.build`, which also runs without Django
(``python -m generation.demo.build``).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from generation.demo import build


class Command(BaseCommand):
    help = "Train the tiny demo Stable Diffusion (64 px coloured shapes) from scratch on the CPU."

    def add_arguments(self, parser: CommandParser) -> None:
        build.add_arguments(parser)

    def handle(self, *args, **opts) -> None:
        summary = build.build(
            opts["out"], seed=opts["seed"], vae_steps=opts["vae_steps"],
            unet_steps=opts["unet_steps"], minutes=opts["minutes"], untrained=opts["untrained"],
            bpe_file=opts["bpe_file"], checkpoint_every=opts["checkpoint_every"],
            threads=opts["threads"], dataset_size=opts["dataset_size"], log=self.stdout.write,
        )
        self.stdout.write(self.style.SUCCESS(f"demo model written to {opts['out']}: {summary}"))
