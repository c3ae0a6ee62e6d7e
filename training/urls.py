from django.urls import path

from . import views

urlpatterns = [
    path("subjects/", views.subject_list, name="subject-list"),
    path("subjects/<int:pk>/", views.subject_detail, name="subject-detail"),
    path("subjects/<int:pk>/photos/", views.photo_upload, name="subject-photo-upload"),
    path("subjects/<int:pk>/photos/captions/", views.photo_captions, name="subject-photo-captions"),
    path("subjects/<int:pk>/photos/<int:photo_pk>/delete/", views.photo_delete, name="subject-photo-delete"),
    path("subjects/<int:pk>/photos/<int:photo_pk>/crop.png", views.photo_crop, name="subject-photo-crop"),
    path("subjects/<int:pk>/train/", views.training_start, name="subject-train"),
    path("subjects/<int:pk>/delete/", views.subject_delete, name="subject-delete"),
    path("training/<int:pk>/", views.run_detail, name="training-run-detail"),
    path("training/<int:pk>/cancel/", views.run_cancel, name="training-run-cancel"),
    path("training/<int:pk>/retry/", views.run_retry, name="training-run-retry"),
    path("training/<int:pk>/checkpoint/", views.run_checkpoint, name="training-run-checkpoint"),
    path("training/<int:pk>/token-embedding/", views.run_token_embedding, name="training-run-token-embedding"),
]
