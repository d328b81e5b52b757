"""The admin's recovery-kit page: an admin types a recovery passphrase twice and downloads the
kit (borgapp.recovery). Nothing of the kit is kept; that it was exported is recorded."""

from django import forms
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.debug import sensitive_post_parameters

from borgapp import recovery
from borgapp.admin_views import require
from borgapp.models import Repository


class KitForm(forms.Form):
    passphrase = forms.CharField(
        label="Recovery passphrase",
        strip=False,
        min_length=recovery.MIN_PASSPHRASE,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=f"At least {recovery.MIN_PASSPHRASE} characters. It opens the kit: keep it "
        "apart from the file (a password manager, a sealed envelope).",
    )
    again = forms.CharField(
        label="The same again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self):
        cleaned = super().clean()
        passphrase, again = cleaned.get("passphrase"), cleaned.get("again")
        if passphrase and again is not None and passphrase != again:
            self.add_error("again", "The two passphrases differ.")
        elif passphrase:
            try:
                recovery.check_passphrase(passphrase)
            except recovery.KitError as exc:
                self.add_error("passphrase", str(exc))
        return cleaned


@sensitive_post_parameters("passphrase", "again")  # never in an error report
def export_page(request, site):
    """The form; on a valid POST the kit itself, as a download."""
    require(request, "admin")
    form = KitForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            kit = recovery.export_kit(form.cleaned_data["passphrase"], user=request.user)
        except recovery.KitError as exc:
            form.add_error(None, str(exc))
        else:
            return download(kit)
    context = {
        **site.each_context(request),
        "title": "Export a recovery kit",
        "form": form,
        "repositories": Repository.objects.filter(state=Repository.State.READY).order_by("name"),
        "last_export": recovery.last_export(),
        "not_in_a_kit": recovery.repositories_not_in_a_kit(),
    }
    return TemplateResponse(request, "admin/borgapp/recovery_kit.html", context)


def download(kit: recovery.Kit) -> HttpResponse:
    response = HttpResponse(kit.data, content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{kit.filename}"'
    response["Cache-Control"] = "no-store"
    return response
