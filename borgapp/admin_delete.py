"""The admin's page before a delete lists every object the delete takes with it, each read
from the database and written into the page. A repository takes its file index and its
stored listings along: millions of rows, which Django's own page would read whole (holding
a web worker and its memory for minutes). Those are counted instead, never read, and go by
one DELETE each, as they do when the API deletes the repository.

Rows that go only because their parent goes are asked of their admin's `may_go_with`
(RoleAdmin), not of its delete permission: an archive's row may not be deleted alone (that
runs borg), but it goes with the repository whose registration an admin forgets."""

from django.contrib.admin.utils import NestedObjects, quote
from django.db import router
from django.db.models.deletion import Collector
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.text import capfirst

from borgapp.models import ArchiveDiffItem, ArchiveItem, IndexVersion

COUNTED = (IndexVersion, ArchiveItem, ArchiveDiffItem)


class _Counting(NestedObjects):
    """Django's collector for the page, but the rows of COUNTED models stay a query."""

    def can_fast_delete(self, objs, from_field=None):
        # (asked of a model class, a query or an object, as Django's collector asks)
        model = objs._meta.model if hasattr(objs, "_meta") else getattr(objs, "model", None)
        return model in COUNTED and Collector.can_fast_delete(self, objs, from_field)


def deleted_objects(objs, request, admin_site):
    """What ModelAdmin.get_deleted_objects gives (the nested list, the count per kind, the
    kinds this user may not delete, the protected objects), with COUNTED rows as one line
    and a count each."""
    if not objs:
        return [], {}, set(), []
    collector = _Counting(using=router.db_for_write(objs[0]._meta.model), origin=objs)
    collector.collect(objs)
    refused = set()
    asked = {(obj.__class__, obj.pk) for obj in objs}

    def allowed(obj) -> bool:
        model_admin = admin_site.get_model_admin(obj.__class__)
        go_with = getattr(model_admin, "may_go_with", None)
        if (obj.__class__, obj.pk) in asked or go_with is None:
            return model_admin.has_delete_permission(request, obj)
        return go_with(request, obj)

    def line(obj):
        opts = obj._meta
        text = f"{capfirst(opts.verbose_name)}: {obj}"
        if not admin_site.is_registered(obj.__class__):
            return text
        if not allowed(obj):
            refused.add(opts.verbose_name)
        try:
            url = reverse(f"{admin_site.name}:{opts.app_label}_{opts.model_name}_change",
                          args=(quote(obj.pk),))  # fmt: skip
        except NoReverseMatch:
            return text
        return format_html('{}: <a href="{}">{}</a>', capfirst(opts.verbose_name), url, obj)

    listed = collector.nested(line)
    counts = {model._meta.verbose_name_plural: len(found)
              for model, found in collector.model_objs.items()}  # fmt: skip
    counted = {}
    for query in collector.fast_deletes:  # (one query per kind and batch of parents)
        name = query.model._meta.verbose_name_plural
        counted[name] = counted.get(name, 0) + query.count()
    for name, number in counted.items():
        if number:
            counts[name] = number
            listed.append(f"{capfirst(name)}: {number:,} (counted, not listed)")
    return listed, counts, refused, [line(obj) for obj in collector.protected]
