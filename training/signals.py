from django.db.models.signals import post_delete
from django.dispatch import receiver

from imagesite.files import delete_file_on_commit, delete_tree_on_commit

from .models import Subject, SubjectPhoto, TrainingRun


@receiver(post_delete, sender=SubjectPhoto)
def delete_photo_files(sender, instance: SubjectPhoto, **kwargs) -> None:
    delete_file_on_commit(instance.upload)  # the raw upload of a photo still pending
    delete_file_on_commit(instance.image)
    delete_file_on_commit(instance.crop)


@receiver(post_delete, sender=TrainingRun)
def delete_run_files(sender, instance: TrainingRun, **kwargs) -> None:
    delete_tree_on_commit(instance.files_dir)  # the checkpoint lives in the run's folder


@receiver(post_delete, sender=Subject)
def delete_subject_files(sender, instance: Subject, **kwargs) -> None:
    delete_tree_on_commit(instance.files_prefix())  # class images and anything left of its runs
