from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import export_views, metrics, views

urlpatterns = [
    path("favicon.ico", views.favicon, name="favicon"),
    path("metrics", metrics.metrics, name="metrics"),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("accounts/password/reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path("accounts/password/reset/sent/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("accounts/password/reset/<uidb64>/<token>/", views.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("accounts/password/reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("accounts/email/", views.account_email, name="account-email"),
    path("accounts/delete/", views.account_delete, name="account-delete"),
    path("accounts/export/", export_views.export_data, name="account-export"),
    path("accounts/export/<int:pk>/download/", export_views.export_download, name="account-export-download"),
    path("accounts/api/", include("api.page_urls")),
    path("admin/", admin.site.urls),
    # Each app's API first; the shared routes end with the JSON 404 for any other /api/ path.
    path("api/v1/", include("generation.api_urls")),
    path("api/v1/", include("training.api_urls")),
    path("api/", include("api.urls")),
    path("", include("training.urls")),
    path("", include("generation.urls")),
]


# Errors that no API view answered (a server error, a body over Django's DATA_UPLOAD_* limits read
# before the view, a PermissionDenied): the API's JSON shape under /api/, Django's pages elsewhere.
# Named by dotted path, as the queue names tasks: the bottom layer imports no app.
handler400 = "api.errors.handler400"
handler403 = "api.errors.handler403"
handler404 = "api.errors.handler404"
handler500 = "api.errors.handler500"
