"""Deleting a row deletes its files, after the transaction commits (a rollback keeps both)."""
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import GeneratedImage


def delete_file_on_commit(field_file) -> None:
    if not field_file:
        return
    storage, name = field_file.storage, field_file.name
    transaction.on_commit(lambda: storage.delete(name))


@receiver(post_delete, sender=GeneratedImage)
def delete_image_files(sender, instance: GeneratedImage, **kwargs) -> None:
    delete_file_on_commit(instance.file)
    delete_file_on_commit(instance.thumbnail)
