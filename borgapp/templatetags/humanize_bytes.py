from django import template

from borgapp.units import human_bytes

register = template.Library()
register.filter("bytes", human_bytes)
