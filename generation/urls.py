from django.urls import path

from . import prompt_file_views, views

urlpatterns = [
    path("", views.generate, name="generation-new"),
    path("recent/", views.generation_recent, name="generation-recent"),
    path("generations/<int:pk>/", views.generation_detail, name="generation-detail"),
    path("generations/<int:pk>/preview.jpg", views.generation_preview, name="generation-preview"),
    path("generations/<int:pk>/input.png", views.generation_input, name="generation-input"),
    path("generations/<int:pk>/mask.png", views.generation_mask, name="generation-mask"),
    path("generations/<int:pk>/cancel/", views.generation_cancel, name="generation-cancel"),
    path("generations/<int:pk>/retry/", views.generation_retry, name="generation-retry"),
    path("generations/<int:pk>/delete/", views.generation_delete, name="generation-delete"),
    path("gallery/", views.gallery, name="gallery"),
    path("loras/", prompt_file_views.prompt_file_list, name="prompt-files"),
    path("loras/<str:kind>/upload/", prompt_file_views.prompt_file_upload, name="prompt-file-upload"),
    path("loras/<str:kind>/<int:pk>/delete/", prompt_file_views.prompt_file_delete, name="prompt-file-delete"),
    path("images/<int:pk>/", views.image_detail, name="image-detail"),
    path("images/<int:pk>/file.png", views.image_file, name="image-file"),
    path("images/<int:pk>/thumb.png", views.image_thumbnail, name="image-thumbnail"),
    path("images/<int:pk>/favourite/", views.image_favourite, name="image-favourite"),
    path("images/<int:pk>/delete/", views.image_delete, name="image-delete"),
]
