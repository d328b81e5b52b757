"""Every operation end to end through the command line, on real borg and temporary
repositories."""

import json
import os
import re

import pytest

from borgapp.models import Archive, Job, Mount, Repository
from tests.helpers import PASSPHRASE, cli, write_files

pytestmark = pytest.mark.django_db


def backup(name, source, prefix="backup", *extra):
    return cli("borg_backup", name, "--source", source, "--prefix", prefix, "--json", *extra)


def borg_names(repo, roots):
    """What borg itself lists (with checkpoints), for catalog comparisons."""
    from borgapp import borg
    from borgapp.operations import borg_config

    listed = borg.run(borg.list_cmd(repo.location), borg_config(), passphrase=PASSPHRASE)
    return {(a["name"], a["id"]) for a in listed.json()["archives"]}


def borg_create(repo, name, src, day=1):
    """An archive made by borg directly (as another tool would), at a fixed time."""
    from borgapp import borg
    from borgapp.operations import borg_config

    command = borg.Command(
        ["create"], [f"--timestamp=2026-01-0{day}T00:00:00"], [f"{repo.location}::{name}", str(src)]
    )
    borg.run(command, borg_config(), passphrase=PASSPHRASE)


def catalog(repo):
    return set(Archive.objects.filter(repository=repo).values_list("name", "borg_id"))


def test_init_registers_and_reports(repo, roots):
    assert repo.state == Repository.State.READY
    assert repo.encryption == "repokey-blake2"
    assert len(repo.borg_id) == 64
    assert repo.get_passphrase() == PASSPHRASE
    assert PASSPHRASE not in repo.passphrase_encrypted
    assert (roots.repos / "main" / "config").exists()
    assert oct(os.stat(roots.repos / "main").st_mode & 0o777) == "0o700"
    job = Job.objects.get(kind="init")
    assert job.status == "succeeded" and job.trigger == "cli"


def test_init_refuses_existing_repository_and_registers_nothing(repo, roots, passfile):
    result = cli(
        "borg_init", "again", "--location", roots.repos / "main", "--passphrase-file", passfile
    )
    assert result.code == 2
    assert "already registered" in result.err
    other = roots.repos / "other"
    other.mkdir()
    (other / "junk").write_text("x")
    result = cli("borg_init", "other", "--location", other, "--passphrase-file", passfile)
    assert result.code == 2
    assert "already exists" in result.err
    assert not Repository.objects.filter(name="other").exists()


def test_init_outside_allowed_roots_is_refused(db, roots, passfile, tmp_path):
    result = cli(
        "borg_init", "x", "--location", tmp_path / "elsewhere", "--passphrase-file", passfile
    )
    assert result.code == 2
    assert "not under an allowed root" in result.err
    assert not Repository.objects.exists() and not Job.objects.exists()


def test_backup_list_info_and_catalog_match_borg(repo, roots, tmp_path):
    src = write_files(tmp_path / "src", {"a.txt": "alpha\n" * 1000, "d/b.bin": os.urandom(5000)})
    result = backup("main", src, "daily")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["status"] == "succeeded"
    res = data["result"]
    assert res["archive_name"].startswith("daily-")
    assert res["nfiles"] == 2
    assert res["original_size"] > 10000
    # ratios are original over stored: higher is better
    assert res["compression_ratio"] == pytest.approx(
        res["original_size"] / res["compressed_size"], rel=1e-3
    )
    archive = Archive.objects.get(repository=repo, name=res["archive_name"])
    assert archive.created_by_app and archive.nfiles == 2 and archive.hostname
    from django.utils import timezone

    assert abs((timezone.now() - archive.start).total_seconds()) < 120  # times are UTC
    assert catalog(repo) == borg_names(repo, roots)

    listed = cli("borg_list", "main", "--json")
    rows = json.loads(listed.out)
    assert [r["name"] for r in rows] == [res["archive_name"]]
    assert rows[0]["id"] == archive.borg_id and rows[0]["original_size"] == res["original_size"]

    info = cli("borg_info", "main", "--json")
    assert info.code == 0
    stats = json.loads(info.out)["result"]
    assert stats["total_size"] == res["original_size"]
    assert stats["deduplication_ratio"] > 0


def test_backup_with_excludes_and_bad_input(repo, roots, tmp_path):
    src = write_files(tmp_path / "src", {"keep.txt": "k", "skip.log": "s", "sub/also.log": "s"})
    result = cli("borg_backup", "main", "--source", src, "--exclude", "*.log", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["result"]["nfiles"] == 1
    for bad in (
        ["--prefix", "{hostname}"],
        ["--prefix", "x.checkpoint"],
        ["--prefix=-x"],
        ["--compression", "lz9"],
        ["--exclude", "re:[unclosed"],  # borg would die of a traceback at start-up
    ):
        result = cli("borg_backup", "main", "--source", src, *bad)
        assert result.code == 2, bad
        assert result.err.strip()
    assert cli("borg_backup", "main", "--source", "relative/path").code == 2
    assert Job.objects.filter(kind="backup").count() == 1  # refused requests record nothing


def test_backup_warning_exits_1(repo, roots, tmp_path):
    src = write_files(tmp_path / "src", {"ok.txt": "fine"})
    result = cli("borg_backup", "main", "--source", src, "--source", tmp_path / "missing")
    assert result.code == 1
    job = Job.objects.get(kind="backup")
    assert job.status == "warning" and job.error_message
    assert Archive.objects.filter(repository=repo, is_checkpoint=False).count() == 1


def test_backup_reports_in_words_and_units_for_a_person(repo, roots, tmp_path):
    """Without --json a person reads a sentence and sizes with units, not a dict of bytes;
    --json keeps the raw numbers for scripts."""
    src = write_files(tmp_path / "src", {f"d/{i}.bin": os.urandom(3000) for i in range(1200)})
    result = cli("borg_backup", "main", "--source", src, "--prefix", "docs")
    assert result.code == 0, result.err
    assert "Backed up 1,200 files (3.6 MB) into docs-" in result.out
    assert re.search(r"^  Original size: +3\.6 MB$", result.out, re.M), result.out
    assert "original_size" not in result.out and "3600000" not in result.out
    listed = cli("borg_list", "main")
    assert " 3.6 MB" in listed.out
    raw = json.loads(backup("main", src, "raw").out)
    assert raw["result"]["original_size"] == 3_600_000


def test_backup_of_only_missing_sources_fails_and_makes_no_archive(repo, roots, tmp_path):
    """A typo in every source path must not become an empty archive that counts as the last
    backup (borg itself only warns)."""
    typo = tmp_path / "srv" / "dtaa"
    result = cli("borg_backup", "main", "--source", typo, "--json")
    assert result.code == 2
    assert "None of the sources exists" in result.err and str(typo) in result.err
    job = Job.objects.get(kind="backup")
    assert (job.status, job.error_code) == ("failed", "sources_missing")
    assert job.result["missing_sources"] == [str(typo)]
    assert not Archive.objects.filter(repository=repo).exists()
    assert cli("borg_sync", "main").code == 0  # the catalog from borg itself: still none
    assert json.loads(cli("borg_list", "main", "--json").out) == []


def test_unknown_repository_exits_2(db, roots):
    result = cli("borg_info", "nope")
    assert result.code == 2 and "No repository named 'nope'" in result.err


def test_prune_is_scoped_to_its_prefix_and_compacts(repo, roots, tmp_path):
    src = write_files(tmp_path / "src", {"f": "data"})
    # Two backup sets in one repository, three archives each, plus a name that merely
    # starts with the same letters.
    for prefix in ("setA", "setB", "setA-extra"):
        for day in (1, 2, 3):
            borg_create(repo, f"{prefix}-2026-01-0{day}T00:00:00Z", src, day)
    assert cli("borg_sync", "main").code == 0
    dry = cli("borg_prune", "main", "--prefix", "setA", "--keep-last", "1", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    plan = json.loads(dry.out)["result"]
    assert len(plan["pruned"]) == 2 and len(plan["kept"]) == 1
    assert all(n.startswith("setA-") for n in plan["pruned"] + plan["kept"])
    assert Archive.objects.filter(repository=repo).count() == 9  # dry run changed nothing

    result = cli("borg_prune", "main", "--prefix", "setA", "--keep-last", "1", "--json")
    assert result.code == 0, result.err
    done = json.loads(result.out)["result"]
    assert done["compacted"] is True
    names = set(Archive.objects.filter(repository=repo).values_list("name", flat=True))
    assert {n for n in names if n.startswith("setB-")} == {
        f"setB-2026-01-0{i}T00:00:00Z" for i in (1, 2, 3)
    }
    assert sorted(n for n in names if n.startswith("setA-")) == [
        "setA-2026-01-03T00:00:00Z",
        *[f"setA-extra-2026-01-0{i}T00:00:00Z" for i in (1, 2, 3)],
    ]
    assert catalog(repo) == borg_names(repo, roots)


def test_prune_with_policy_and_invalid_rules(repo, roots):
    assert cli("borg_prune", "main", "--prefix", "x", "--policy", "missing").code == 2
    assert cli("borg_prune", "main", "--prefix", "x").code == 2  # no keep rule
    assert cli("borg_prune", "main", "--prefix", "{now}", "--keep-daily", "1").code == 2
    result = cli("borg_prune", "main", "--prefix", "x", "--policy", "recommended", "--json")
    assert result.code == 0, result.err
    assert "--keep-hourly=24" in json.loads(result.out)["result"]["rules"]


def test_compact_and_check(repo, roots, tmp_path):
    src = write_files(tmp_path / "src", {"f": "x" * 10000})
    assert backup("main", src).code == 0
    assert cli("borg_compact", "main").code == 0
    for extra in ([], ["--verify-data"], ["--repository-only"], ["--archives-only"]):
        result = cli("borg_check", "main", *extra)
        assert result.code == 0, (extra, result.err)
    assert cli("borg_check", "main", "--max-duration", "10").code == 2  # needs repository-only


def test_check_finds_corruption_and_fails(repo, roots, tmp_path):
    src = write_files(tmp_path / "src", {"f": os.urandom(200_000)})
    assert backup("main", src).code == 0
    segments = sorted((roots.repos / "main" / "data").glob("*/*"), key=lambda p: p.stat().st_size)
    victim = segments[-1]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.write_bytes(bytes(blob))
    result = cli("borg_check", "main", "--repository-only")
    assert result.code == 2
    job = Job.objects.filter(kind="check").latest("id")
    assert job.status == "failed" and job.error_code == "integrity_error"


def test_extract_into_allowed_root_only(repo, roots, tmp_path):
    src = write_files(tmp_path / "src", {"one.txt": "1", "two/three.txt": "3"})
    name = json.loads(backup("main", src).out)["result"]["archive_name"]
    target = roots.restore / "r1"
    result = cli("borg_extract", "main", name, "--target", target, "--json")
    assert result.code == 0, result.err
    restored = target / str(src).lstrip("/")
    assert (restored / "two" / "three.txt").read_text() == "3"
    assert json.loads(result.out)["result"]["target_path"] == str(target)

    # a subset of paths, with strip-components
    subset_target = roots.restore / "r2"
    subset_path = str(src / "two").lstrip("/")
    depth = len(subset_path.split("/"))
    result = cli(
        "borg_extract",
        "main",
        name,
        subset_path,
        "--target",
        subset_target,
        "--strip-components",
        depth,
    )
    assert result.code == 0, result.err
    assert sorted(os.listdir(subset_target)) == ["three.txt"]

    # refused: outside the root, traversal, non-empty target, unknown archive
    assert cli("borg_extract", "main", name, "--target", tmp_path / "out").code == 2
    assert cli("borg_extract", "main", name, "--target", f"{roots.restore}/../x").code == 2
    assert cli("borg_extract", "main", name, "--target", target).code == 2  # not empty
    assert cli("borg_extract", "main", name, "../etc", "--target", roots.restore / "r3").code == 2
    assert cli("borg_extract", "main", "no-such", "--target", roots.restore / "r4").code == 2
    link = roots.restore / "link"
    link.symlink_to(tmp_path)
    assert cli("borg_extract", "main", name, "--target", link / "inside").code == 2
    assert not (tmp_path / "inside").exists()


def test_delete_archive(repo, roots, tmp_path):
    src = write_files(tmp_path / "src", {"f": "x"})
    first = json.loads(backup("main", src, "a").out)["result"]["archive_name"]
    second = json.loads(backup("main", src, "b").out)["result"]["archive_name"]
    result = cli("borg_delete", "main", first, "--json")
    assert result.code == 0, result.err
    assert set(Archive.objects.values_list("name", flat=True)) == {second}
    assert catalog(repo) == borg_names(repo, roots)
    assert cli("borg_delete", "main", first).code == 2


def test_mount_and_umount(repo, roots, tmp_path):
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine")
    src = write_files(tmp_path / "src", {"hello.txt": "hello"})
    name = json.loads(backup("main", src).out)["result"]["archive_name"]
    point = roots.mnt / "m1"
    result = cli("borg_mount", "main", name, "--mountpoint", point, "--json")
    assert result.code == 0, result.err
    try:
        assert os.path.ismount(point)
        assert (point / str(src).lstrip("/") / "hello.txt").read_text() == "hello"
        assert Mount.objects.filter(mountpoint=str(point)).exists()
    finally:
        result = cli("borg_umount", "--mountpoint", point, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["result"]["was_mounted"] is True
    assert not os.path.ismount(point)
    assert not Mount.objects.exists()
    # whole repository; while it is mounted borg holds the lock: other jobs are refused
    whole = roots.mnt / "m2"
    assert cli("borg_mount", "main", "--mountpoint", whole).code == 0
    assert os.listdir(whole) == [name]
    mount_job = Job.objects.filter(kind="mount").latest("id")
    assert Repository.objects.get(pk=repo.pk).lease_job_id == mount_job.pk
    refused = cli("borg_backup", "main", "--source", src)
    assert refused.code == 2 and "mounted" in refused.err
    assert cli("borg_umount", "--mountpoint", whole).code == 0
    assert Repository.objects.get(pk=repo.pk).lease_job_id is None
    assert cli("borg_backup", "main", "--source", src).code == 0
    # refused: outside the mount root; nothing recorded there
    assert cli("borg_mount", "main", "--mountpoint", tmp_path / "m").code == 2
    assert cli("borg_umount", "--mountpoint", roots.mnt / "never").code == 2


def test_mount_of_missing_repository_fails(repo, roots):
    import shutil

    shutil.rmtree(roots.repos / "main")
    result = cli("borg_mount", "main", "--mountpoint", roots.mnt / "m")
    assert result.code == 2
    assert not os.path.ismount(roots.mnt / "m")
    assert Job.objects.latest("id").error_code == "repository_missing"


def test_sync_imports_archives_made_outside_the_app(repo, roots, tmp_path):
    src = write_files(tmp_path / "src", {"f": "x"})
    borg_create(repo, "outside-1", src)
    assert cli("borg_sync", "main").code == 0
    archive = Archive.objects.get(name="outside-1")
    assert not archive.created_by_app
    assert catalog(repo) == borg_names(repo, roots)


def test_import_existing_repository(repo, roots, tmp_path, passfile):
    src = write_files(tmp_path / "src", {"f": "content"})
    name = json.loads(backup("main", src).out)["result"]["archive_name"]
    location = repo.location
    # forget the registration, then import the same repository again
    Repository.objects.all().delete()
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase")
    result = cli("borg_import", "back", "--location", location, "--passphrase-file", wrong)
    assert result.code == 2
    assert "passphrase" in result.err.lower()
    assert not Repository.objects.exists()  # a wrong passphrase registers nothing

    result = cli(
        "borg_import", "back", "--location", location, "--passphrase-file", passfile, "--json"
    )
    assert result.code == 0, result.err
    imported = Repository.objects.get(name="back")
    assert imported.state == "ready" and imported.get_passphrase() == PASSPHRASE
    archive = Archive.objects.get(repository=imported, name=name)
    assert archive.original_size == 7 and archive.nfiles == 1


def test_one_repository_cannot_be_registered_twice(repo, roots, passfile):
    link = roots.repos / "alias"
    link.symlink_to(roots.repos / "main")
    result = cli("borg_import", "alias", "--location", link, "--passphrase-file", passfile)
    assert result.code == 2 and "already registered" in result.err
    assert Repository.objects.count() == 1


def test_ssh_locations_have_one_spelling():
    from borgapp.validation import validate_location

    assert (
        validate_location("ssh://u@Host.Example:22//srv//repo/") == "ssh://u@host.example/srv/repo"
    )
    assert validate_location("ssh://u@h:2222/./r") == "ssh://u@h:2222/./r"


def test_import_of_missing_repository(db, roots, passfile):
    result = cli(
        "borg_import", "ghost", "--location", roots.repos / "ghost", "--passphrase-file", passfile
    )
    assert result.code == 2
    assert "no borg repository" in result.err.lower()
    assert not Repository.objects.exists()


def test_key_export(repo, roots, tmp_path):
    out = tmp_path / "key.txt"
    result = cli("borg_key_export", "main", "--output", out)
    assert result.code == 0, result.err
    assert out.read_text().startswith("BORG_KEY ")
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    job = Job.objects.get(kind="key_export")
    assert "BORG_KEY" not in json.dumps(job.result)  # the key itself is not stored
    assert cli("borg_key_export", "main", "--output", out).code == 2  # no overwrite


def test_change_passphrase(repo, roots, tmp_path):
    new = tmp_path / "new"
    new.write_text("a brand new passphrase")
    result = cli("borg_change_passphrase", "main", "--passphrase-file", new)
    assert result.code == 0, result.err
    repo.refresh_from_db()
    assert repo.get_passphrase() == "a brand new passphrase"
    assert not repo.new_passphrase_encrypted
    job = Job.objects.get(kind="change_passphrase")
    assert "brand new" not in job.log_tail + json.dumps(job.result)
    # the repository opens with the new one only
    assert cli("borg_info", "main").code == 0
    from borgapp import borg
    from borgapp.operations import borg_config

    with pytest.raises(borg.WrongPassphrase):
        borg.run(borg.info_cmd(repo.location), borg_config(), passphrase=PASSPHRASE)


def test_change_passphrase_refused_while_another_waits(repo, roots, tmp_path):
    from borgapp import vault

    Repository.objects.filter(pk=repo.pk).update(new_passphrase_encrypted=vault.encrypt("x"))
    new = tmp_path / "new"
    new.write_text("another one")
    result = cli("borg_change_passphrase", "main", "--passphrase-file", new)
    assert result.code == 2 and "already waiting" in result.err
    assert Repository.objects.get(pk=repo.pk).get_passphrase() != "another one"


def test_break_lock(repo, roots):
    lock = roots.repos / "main" / "lock.exclusive"
    lock.mkdir()
    (lock / "otherhost@1234.999-0").write_text("")
    (roots.repos / "main" / "lock.roster").write_text('{"exclusive": [["otherhost@1234", 999, 0]]}')
    result = cli("borg_break_lock", "main")
    assert result.code == 0, result.err
    assert not lock.exists()


def test_jobs_listing_and_filters(repo, roots, tmp_path):
    src = write_files(tmp_path / "src", {"f": "x"})
    backup("main", src)
    cli("borg_info", "nope")
    rows = json.loads(cli("borg_jobs", "--json").out)
    assert [r["kind"] for r in rows] == ["backup", "init"]
    rows = json.loads(cli("borg_jobs", "--repository", "main", "--kind", "backup", "--json").out)
    assert len(rows) == 1 and rows[0]["status"] == "succeeded"
    assert json.loads(cli("borg_jobs", "--status", "failed", "--json").out) == []
