"""SEC-04, SEC-05, SEC-06: the injection tables are refused with a clear message, at model
level and again in borg.py right before borg runs."""

from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from borgapp import borg, validation
from borgapp.validation import InvalidInput

ROOTS = [Path("/srv/repos")]

BAD_LOCATIONS = [
    "ssh://-oProxyCommand=touch PWNED@127.0.0.1/./repo",
    "ssh://user@-oProxyCommand=x/repo",
    "ssh://us er@host/repo",
    "ssh://user;id@host/repo",
    "ssh://user@host:0/repo",
    "ssh://user@host:70000/repo",
    "ssh://user@ho_st/repo",
    "ssh://user@host/re\npo",
    "ssh://user@host/repo::x",
    "ssh://user@host/{hostname}",
    "ssh://user@host",
    "ssh://@host/repo",
    "ssh://user@[not-ipv6]/repo",
    "--rsh=sh -c 'id' #",
    "-x",
    "relative/repo",
    "/srv/repos/../etc",
    "/srv/repos/x::y",
    "/srv/repos/{now}",
    "/srv/repos/a\x00b",
    "user@host:repo",
    "file:///srv/repos/x",
    "",
]


@pytest.mark.parametrize("location", BAD_LOCATIONS)
def test_bad_locations_are_refused_everywhere(location):
    with pytest.raises(InvalidInput) as info:
        validation.validate_location(location, ROOTS)
    assert str(info.value)  # names the problem
    with pytest.raises(InvalidInput):
        borg.repo_arg(location)  # defence in depth right before borg


@pytest.mark.parametrize(
    "location",
    [
        "ssh://backup@host.example.com/./repo",
        "ssh://backup@host.example.com:2222/~/repo",
        "ssh://u1@127.0.0.1/srv/repo",
        "ssh://u@[::1]:22/srv/repo",
        "/srv/repos/main",
        "/srv/repos/team/main",
    ],
)
def test_good_locations_pass(location):
    assert validation.validate_location(location, ROOTS)


def test_local_location_must_be_under_a_root(tmp_path):
    root = tmp_path / "repos"
    root.mkdir()
    with pytest.raises(InvalidInput, match="not under an allowed root"):
        validation.validate_location(str(tmp_path / "elsewhere"), [root])
    with pytest.raises(InvalidInput):
        validation.validate_location(str(root), [root])  # the root itself is not a repository
    link = root / "escape"
    link.symlink_to(tmp_path)
    with pytest.raises(InvalidInput):
        validation.require_under_roots(str(link / "x"), [root], "Repository")


@pytest.mark.django_db
def test_model_validation_refuses_injection(settings, tmp_path):
    from borgapp.models import Repository

    settings.REPOSITORY_ROOTS = [tmp_path]
    repo = Repository(name="r", location="ssh://-oProxyCommand=x@h/p")
    with pytest.raises(ValidationError) as info:
        repo.full_clean()
    assert "location" in info.value.message_dict
    repo = Repository(name="bad name!", location=str(tmp_path / "ok"))
    with pytest.raises(ValidationError) as info:
        repo.full_clean()
    assert "name" in info.value.message_dict


BAD_ARCHIVE_PARTS = [
    "{hostname}",
    "{now}",
    "--help",
    "-x",
    " leading",
    "new\nline",
    "$(id)",
    "a;b",
    "a/b",
    "a::b",
    "x.checkpoint",
    "x.checkpoint.3",
    "",
    "a" * 101,
]


@pytest.mark.parametrize("name", BAD_ARCHIVE_PARTS)
def test_bad_archive_names_are_refused(name):
    with pytest.raises(InvalidInput):
        validation.validate_archive_part(name)


@pytest.mark.parametrize("name", ["daily", "db.main_2", "A-1", "x" * 100])
def test_good_archive_names(name):
    assert validation.validate_archive_part(name) == name


@pytest.mark.parametrize("name", ["{now}", "a/b", "a::b", "tab\there", ""])
def test_existing_archive_names_that_borg_cannot_address_safely(name):
    with pytest.raises(InvalidInput):
        validation.validate_existing_archive_name(name)


def test_existing_archive_names_from_other_tools_are_usable():
    assert validation.validate_existing_archive_name("host-2024-01-01T00:00:00")


@pytest.mark.parametrize("path", ["../etc", "a/../../b", "", "/", "a\nb"])
def test_archive_paths_refused(path):
    with pytest.raises(InvalidInput):
        validation.validate_archive_path(path)


@pytest.mark.parametrize("pattern", ["", "xy:z", "re:", "re:[unclosed", "a\nb"])
def test_exclude_patterns_refused(pattern):
    with pytest.raises(InvalidInput):
        validation.validate_exclude_pattern(pattern)


@pytest.mark.parametrize("pattern", ["*.log", "x:y", "sh:/home/*/.cache/**", "re:^/tmp/.*\\.o$"])
def test_exclude_patterns_borg_accepts_are_accepted(pattern):
    """A style prefix is exactly two letters: "x:y" is borg's fnmatch pattern."""
    assert validation.validate_exclude_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "compression",
    ["lz4", "none", "zstd", "zstd,3", "zlib,6", "auto,zstd,7", "lzma,9", "obfuscate,250,zstd,3"],
)
def test_compression_choices(compression):
    assert validation.validate_compression(compression)


@pytest.mark.parametrize(
    "compression", ["lz9", "zstd,99", "lz4 --rsh=x", "", "zstd,-5", "auto", "zstd,", "lzma,10"]
)
def test_compression_refused(compression):
    """borg's own rules: it refuses zstd,-5 (levels 1-22) and a bare auto at start-up."""
    with pytest.raises(InvalidInput, match="Compression"):
        validation.validate_compression(compression)


def test_passphrase_rules():
    with pytest.raises(InvalidInput):
        validation.validate_passphrase("a\nb")
    with pytest.raises(InvalidInput):
        validation.validate_passphrase("x" * 2000)
    assert validation.validate_passphrase("spaces and ünïcödé ok") == "spaces and ünïcödé ok"


@pytest.mark.django_db
def test_retention_policy_needs_a_rule():
    from borgapp.models import RetentionPolicy

    with pytest.raises(ValidationError):
        RetentionPolicy(name="empty").full_clean()
    with pytest.raises(ValidationError):
        RetentionPolicy(name="bad", keep_within="7 days").full_clean()
    policy = RetentionPolicy(name="ok", keep_within="7d", keep_daily=7)
    policy.full_clean()
    assert policy.borg_options() == ["--keep-within=7d", "--keep-daily=7"]
    recommended = RetentionPolicy.objects.get(name="recommended")
    assert recommended.borg_options() == [
        "--keep-hourly=24",
        "--keep-daily=7",
        "--keep-weekly=4",
        "--keep-monthly=6",
        "--keep-yearly=2",
    ]
