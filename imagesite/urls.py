from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import views

urlpatterns = [
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("accounts/api/", include("api.page_urls")),
    path("admin/", admin.site.urls),
    # Each app's API first; the shared routes end with the JSON 404 for any other /api/ path.
    path("api/v1/", include("generation.api_urls")),
    path("api/v1/", include("training.api_urls")),
    path("api/", include("api.urls")),
    path("", include("training.urls")),
    path("", include("generation.urls")),
]


def handler500(request):
    """API clients get the one JSON error shape even for a server error; pages get Django's page."""
    from django.http import JsonResponse
    from django.views.defaults import server_error

    if request.path.startswith("/api/"):
        from api.errors import error_body

        return JsonResponse(error_body(500, "server_error", "The server hit an error; it was logged."), status=500)
    return server_error(request)
