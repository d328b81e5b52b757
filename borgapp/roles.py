"""Roles (SEC-07): viewer reads, operator also runs jobs, admin also changes configuration
and secrets. Deny by default: a user in no role group can do nothing; superusers are admins.

A leaf module: every door (admin, API, intake's own rules) asks here."""

ROLES = ("viewer", "operator", "admin")


def role_of(user) -> str | None:
    """The highest role a user holds, or None."""
    if not user or not user.is_authenticated or not user.is_active:
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
