from django.db.models.signals import post_delete
from django.dispatch import receiver

from imagesite.files import delete_file_on_commit

from .models import Embedding, GeneratedImage, Generation, Lora


@receiver(post_delete, sender=GeneratedImage)
def delete_image_files(sender, instance: GeneratedImage, **kwargs) -> None:
    delete_file_on_commit(instance.file)
    delete_file_on_commit(instance.thumbnail)


@receiver(post_delete, sender=Generation)
def delete_input_files(sender, instance: Generation, **kwargs) -> None:
    """A job's input and mask go with it (and with its owner's account, by cascade), after commit."""
    delete_file_on_commit(instance.init_image)
    delete_file_on_commit(instance.mask)


@receiver(post_delete, sender=Lora)
@receiver(post_delete, sender=Embedding)
def delete_prompt_file_files(sender, instance, **kwargs) -> None:
    delete_file_on_commit(instance.file)
