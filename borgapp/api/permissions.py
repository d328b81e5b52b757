"""The API's permission class over the roles of `borgapp.roles`."""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from borgapp.roles import ROLES, has_role, role_of  # noqa: F401 (the API's import path)


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
