"""Roles (SEC-07): viewer reads, operator also runs jobs, admin also changes configuration
and secrets. Deny by default; superusers can do everything."""

from rest_framework.permissions import SAFE_METHODS, BasePermission

ROLES = ("viewer", "operator", "admin")


def role_of(user) -> str | None:
    """The highest role a user holds, or None."""
    if not user or not user.is_authenticated:
        return None
    if user.is_superuser:
        return "admin"
    names = set(user.groups.values_list("name", flat=True))
    for role in reversed(ROLES):
        if role in names:
            return role
    return None


def has_role(user, needed: str) -> bool:
    held = role_of(user)
    return held is not None and ROLES.index(held) >= ROLES.index(needed)


class RolePermission(BasePermission):
    """Reads need viewer; writes need admin unless the view names a lower role for the
    action in `action_roles` (for instance operator for `backup`)."""

    message = "Your role does not allow this."

    def has_permission(self, request, view) -> bool:
        needed = self.needed_role(request, view)
        return needed is not None and has_role(request.user, needed)

    @staticmethod
    def needed_role(request, view) -> str | None:
        action = getattr(view, "action", None)
        roles = getattr(view, "action_roles", {})
        if action in roles:
            return roles[action]
        if request.method in SAFE_METHODS:
            return getattr(view, "read_role", "viewer")
        return getattr(view, "write_role", "admin")
