from datetime import timedelta

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _referenced_files():
    """What generation's rows name: images and thumbnails, inputs and masks, LoRAs and embeddings."""
    from imagesite.orphans import stored_names

    from .models import Embedding, GeneratedImage, Generation, Lora

    yield from stored_names(GeneratedImage.objects.all(), "file", "thumbnail")
    yield from stored_names(Generation.objects.all(), "init_image", "mask")
    for kind in (Lora, Embedding):
        yield from stored_names(kind.objects.all(), "file")


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Generation"

    def ready(self) -> None:
        from api.webhooks import register_job_serializer
        from imagesite import orphans, quotas

        from . import signals  # noqa: F401  (deletes files with their rows)
        from .models import Embedding, Generation, Lora
        from .serializers import GenerationSerializer

        quotas.register("max_queued_jobs", lambda user: Generation.objects.for_user(user).active())
        # Validation images a training run draws are generations too, but the user did not ask for them.
        quotas.register("generations_per_hour", lambda user: Generation.objects.for_user(user).filter(training_run__isnull=True),
                        window=timedelta(hours=1))
        quotas.register("gpu_seconds_per_day", lambda user: Generation.objects.for_user(user), window=timedelta(days=1))
        register_job_serializer(Generation, GenerationSerializer)
        # Files a killed worker or request wrote but never committed a row for go after an hour.
        orphans.register("generation", roots=("images", "thumbs", "inputs", Lora.folder, Embedding.folder),
                         files=_referenced_files)
        from imagesite.export import register_part

        from .export_parts import generation_part

        register_part("generation", generation_part)  # images, inputs, LoRAs, embeddings in a data export
        from .catalog import scan_after_migrate

        # The base model rows (IMAGESITE_MODEL, the models folder) exist as soon as the database does.
        post_migrate.connect(scan_after_migrate, sender=self, dispatch_uid="generation-scan-models")
