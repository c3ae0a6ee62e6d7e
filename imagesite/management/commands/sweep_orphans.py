"""`manage.py sweep_orphans [--dry-run] [--grace-minutes N]`: remove media files no row refers to
(imagesite.orphans), printing each one removed and a summary. The hourly schedule runs the same sweep."""
from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser

from imagesite.orphans import grace_period, sweep


class Command(BaseCommand):
    help = "Remove media files that no row refers to and that are older than the grace period (default: an hour)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Print what would be removed; remove nothing.")
        parser.add_argument("--grace-minutes", type=float, default=None,
                            help="Keep files modified this recently (default: IMAGESITE_ORPHAN_GRACE_S, an hour). "
                                 "Below the longest write in progress, a file whose row is not committed yet could go.")

    def handle(self, *args, dry_run: bool, grace_minutes: float | None, **options) -> None:
        if grace_minutes is not None and grace_minutes < 0:
            raise CommandError("--grace-minutes cannot be negative.")
        grace = timedelta(minutes=grace_minutes) if grace_minutes is not None else grace_period()
        report = sweep(dry_run=dry_run, grace=grace)
        verb = "would remove" if dry_run else "removed"
        for name in report.removed:
            self.stdout.write(f"{verb} {name}")
        for root in report.roots_skipped:
            self.stderr.write(f"skipped {root}: a symbolic link (its files are left alone)")
        self.stdout.write(
            f"{verb.capitalize()} {len(report.removed)} orphan file(s), {report.removed_bytes:,} bytes; kept "
            f"{report.referenced} referenced and {report.young} younger than {grace} "
            f"({report.links_skipped} link(s) left alone) in {report.seconds:.2f} s."
        )
