"""borg.py without running borg: exact argv of every command, and the parsing of output
recorded from real borg 1.2.4 and 1.4.5 (tests/data/record_borg_output.py)."""

import json
from collections import deque
from pathlib import Path

import pytest

from borgapp import borg
from borgapp.validation import InvalidInput

DATA = Path(__file__).parent / "data"
CONFIG = borg.BorgConfig(binary="/opt/borg", base_dir="/b", lock_wait=600)
R = "/srv/repos/r1"


def argv(command):
    return command.argv(CONFIG)


LW = "--lock-wait=600"


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            borg.init_cmd(R, "repokey-blake2"),
            [
                "init",
                "--log-json",
                LW,
                "--encryption=repokey-blake2",
                "--make-parent-dirs",
                "--",
                R,
            ],
        ),
        (
            borg.init_cmd(R, "none", append_only=True),
            [
                "init",
                "--log-json",
                LW,
                "--encryption=none",
                "--make-parent-dirs",
                "--append-only",
                "--",
                R,
            ],  # fmt: skip
        ),
        (
            borg.create_cmd(
                R,
                "daily-1",
                ["/data", "/etc"],
                compression="zstd,3",
                exclude_file="/tmp/x/excludes.txt",
                one_file_system=True,
                checkpoint_interval=300,
                comment="-rf nightly",
            ),
            [
                "create",
                "--log-json",
                LW,
                "--progress",
                "--json",
                "--compression=zstd,3",
                "--exclude-from=/tmp/x/excludes.txt",
                "--one-file-system",
                "--checkpoint-interval=300",
                "--comment=-rf nightly",
                "--",
                f"{R}::daily-1",
                "/data",
                "/etc",
            ],
        ),
        (
            borg.list_cmd(R),
            [
                "list",
                "--log-json",
                LW,
                "--json",
                "--consider-checkpoints",
                "--format={name}{id}{start}{end}{hostname}{username}{comment}",
                "--",
                R,
            ],
        ),
        (borg.info_cmd(R), ["info", "--log-json", LW, "--json", "--", R]),
        (
            borg.info_cmd(R, all_archives=True),
            ["info", "--log-json", LW, "--json", "--glob-archives=*", "--", R],
        ),
        (
            borg.prune_cmd(R, "daily-*", ["--keep-daily=7"], dry_run=True),
            [
                "prune",
                "--log-json",
                LW,
                "--progress",
                "--list",
                "--glob-archives=daily-*",
                "--keep-daily=7",
                "--dry-run",
                "--",
                R,
            ],
        ),
        (borg.compact_cmd(R), ["compact", "--log-json", LW, "--progress", "--", R]),
        (
            borg.check_cmd(R, archives_only=True, verify_data=True, last=3),
            [
                "check",
                "--log-json",
                LW,
                "--progress",
                "--archives-only",
                "--verify-data",
                "--last=3",
                "--",
                R,
            ],
        ),
        (
            borg.check_cmd(R, repository_only=True, max_duration=600),
            [
                "check",
                "--log-json",
                LW,
                "--progress",
                "--repository-only",
                "--max-duration=600",
                "--",
                R,
            ],
        ),
        (
            borg.extract_cmd(R, "a-1", "/restore/x", ["home/u", "/etc/"], strip_components=2),
            [
                "extract",
                "--log-json",
                LW,
                "--progress",
                "--sparse",
                "--strip-components=2",
                "--",
                f"{R}::a-1",
                "pp:home/u",
                "pp:etc",
            ],
        ),
        (
            borg.delete_archive_cmd(R, "a-1"),
            ["delete", "--log-json", LW, "--progress", "--", f"{R}::a-1"],
        ),
        (borg.mount_cmd(R, None, "/mnt/m"), ["mount", "--log-json", LW, "--", R, "/mnt/m"]),
        (
            borg.mount_cmd(R, "a-1", "/mnt/m"),
            ["mount", "--log-json", LW, "--", f"{R}::a-1", "/mnt/m"],
        ),
        (borg.umount_cmd("/mnt/m"), ["umount", "--log-json", "--", "/mnt/m"]),
        (borg.key_export_cmd(R), ["key", "export", "--log-json", LW, "--", R]),
        (
            borg.key_export_cmd(R, paper=True),
            ["key", "export", "--log-json", LW, "--paper", "--", R],
        ),
        (
            borg.change_passphrase_cmd(R, "old", "new"),
            ["key", "change-passphrase", "--log-json", LW, "--", R],
        ),
        (borg.break_lock_cmd(R), ["break-lock", "--log-json", LW, "--", R]),
        (
            borg.list_cmd("ssh://backup@host.example:2222/./repo"),
            [
                "list",
                "--log-json",
                LW,
                "--json",
                "--consider-checkpoints",
                "--format={name}{id}{start}{end}{hostname}{username}{comment}",
                "--",
                "ssh://backup@host.example:2222/./repo",
            ],
        ),
    ],
)
def test_exact_argv(command, expected):
    assert argv(command) == ["/opt/borg", *expected]


def test_remote_path_is_configuration():
    config = borg.BorgConfig(binary="borg", base_dir="/b", remote_path="borg-1.4")
    assert borg.info_cmd(R).argv(config)[:4] == ["borg", "info", "--log-json", "--lock-wait=600"]
    assert "--remote-path=borg-1.4" in borg.info_cmd(R).argv(config)


def test_change_passphrase_goes_through_stdin_not_argv():
    command = borg.change_passphrase_cmd(R, "old secret", "new secret")
    assert "secret" not in " ".join(argv(command))
    assert command.stdin_data == "old secret\nnew secret\nnew secret\n"


@pytest.mark.parametrize(
    "build",
    [
        lambda: borg.create_cmd("--rsh=sh -c id", "a", ["/x"]),
        lambda: borg.create_cmd(R, "a", ["relative"]),
        lambda: borg.create_cmd(R, "a", []),
        lambda: borg.create_cmd(R, "a{now}", ["/x"]),
        lambda: borg.create_cmd(R, "a", ["/x"], compression="lz4;id"),
        lambda: borg.extract_cmd(R, "a", "/t", ["../../etc"]),
        lambda: borg.list_cmd("ssh://-oProxyCommand=touch x@h/p"),
        lambda: borg.check_cmd(R, repository_only=True, archives_only=True),
        lambda: borg.prune_cmd(R, "x-*", []),
    ],
)
def test_builders_refuse_bad_input(build):
    with pytest.raises(InvalidInput):
        build()


def test_clean_environment_drops_inherited_borg_variables(monkeypatch):
    monkeypatch.setenv("BORG_PASSPHRASE", "leaked")
    monkeypatch.setenv("BORG_NEW_PASSPHRASE", "leaked")
    env = borg.environment(CONFIG)
    assert "leaked" not in env.values()
    assert env["BORG_RELOCATED_REPO_ACCESS_IS_OK"] == "no"
    assert env["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] == "no"
    assert env["BORG_EXIT_CODES"] == "modern"
    assert env["BORG_BASE_DIR"] == "/b"
    assert env["LANG"] == "C.UTF-8"
    assert env["TZ"] == "UTC"  # borg's naive times are read as UTC


# --- recorded output ------------------------------------------------------------------------


def replay(version, case):
    record = json.loads((DATA / f"borg-{version}" / f"{case}.json").read_text())
    messages, tail = [], deque(maxlen=borg.TAIL_LINES)
    events = []
    for line in record["stderr"].splitlines():
        borg._handle_line(line.encode(), messages, tail, events.append)
    result = borg.Result(record["rc"], record["stdout"], messages, list(tail), 0.0)
    return record, result, events


VERSIONS = ["1.2", "1.4"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "case, error_class",
    [
        ("wrong_passphrase", borg.WrongPassphrase),
        ("missing_repo", borg.RepositoryMissing),
        ("missing_archive", borg.ArchiveMissing),
        ("create_exists", borg.ArchiveExists),
        ("lock_timeout", borg.LockTimeout),
    ],
)
def test_errors_map_to_classes(version, case, error_class):
    record, result, _ = replay(version, case)
    error = borg.error_for(record["rc"], result.messages, result.tail)
    assert type(error) is error_class
    assert error.code and str(error) == error_class.summary
    assert "/WORK" not in str(error)  # raw borg paths do not reach a person's message
    assert error.tail  # the log is kept for the job row


@pytest.mark.parametrize("version", VERSIONS)
def test_check_rc1_is_a_failure_but_create_rc1_a_warning(version):
    record, result, _ = replay(version, "check_corrupt")
    assert record["rc"] == 1
    assert isinstance(
        borg.error_for(1, result.messages, result.tail, check=True), borg.IntegrityError
    )
    record, result, _ = replay(version, "warning_missing_source")
    assert borg.error_for(record["rc"], result.messages, result.tail) is None
    assert result.warning
    assert any("missing" in w or "No such file" in w for w in result.warnings)


@pytest.mark.parametrize("version", VERSIONS)
def test_create_json_and_list_json_parse(version):
    _, created, _ = replay(version, "create")
    archive = created.json()["archive"]
    assert archive["name"] == "arch-1"
    assert archive["stats"]["nfiles"] == 2
    assert archive["stats"]["original_size"] >= 10600  # 10,000 + 600 bytes of content
    _, listed, _ = replay(version, "list")
    names = {a["name"]: a for a in listed.json()["archives"]}
    assert set(names) == {"arch-1", "other-1"}
    assert all(a["hostname"] and a["username"] and a["id"] for a in names.values())
    assert "end" in names["arch-1"] and "comment" in names["arch-1"]


@pytest.mark.parametrize("version", VERSIONS)
def test_info_json_has_the_keys_the_catalog_stores(version):
    _, info, _ = replay(version, "info")
    data = info.json()
    stats = data["cache"]["stats"]
    for key in (
        "total_size",
        "total_csize",
        "unique_size",
        "unique_csize",
        "total_chunks",
        "total_unique_chunks",
    ):
        assert isinstance(stats[key], int), key
    assert len(data["repository"]["id"]) == 64
    assert data["encryption"]["mode"] == "repokey-blake2"


@pytest.mark.parametrize("version", VERSIONS)
def test_prune_listing_parses(version):
    _, result, _ = replay(version, "prune_dry_run")
    listing = borg.prune_lines(result)
    assert listing == {"kept": ["arch-1"], "pruned": []}


def test_prune_lines_for_pruned_archives():
    result = borg.Result(
        0,
        "",
        [
            {"type": "log_message", "message": "Would prune:                    a-1   Thu, ..."},
            {"type": "log_message", "message": "Pruning archive (1/2):          a-2   Thu, ..."},
            {"type": "log_message", "message": "Keeping archive (rule: daily #1):  a-3   Thu"},
        ],
        [],
        0,
    )
    assert borg.prune_lines(result) == {"kept": ["a-3"], "pruned": ["a-1", "a-2"]}


@pytest.mark.parametrize(
    "rc, cls",
    [
        (-9, borg.Interrupted),
        (143, borg.Interrupted),
        (130, borg.Interrupted),
        (14, borg.DiskFull),
        (20, borg.DiskFull),
        (80, borg.ConnectionClosed),
        (95, borg.IntegrityError),
        (62, borg.AccessAborted),
        (2, borg.BorgError),
    ],
)
def test_exit_code_table(rc, cls):
    error = borg.error_for(rc, [], ["some line"])
    assert type(error) is cls


def test_no_error_for_success_and_warnings():
    for rc in (0, 1, 100, 107, 127):
        assert borg.error_for(rc, [], []) is None


def test_enospc_in_generic_error_is_disk_full():
    messages = [
        {
            "type": "log_message",
            "levelname": "ERROR",
            "msgid": "Exception",
            "message": "OSError: [Errno 28] No space left on device",
        }
    ]
    assert isinstance(borg.error_for(2, messages, []), borg.DiskFull)


def test_transient_classes():
    assert borg.LockTimeout.transient and borg.ConnectionClosed.transient
    assert not borg.WrongPassphrase.transient and not borg.DiskFull.transient


def test_parse_version():
    assert borg.parse_version("borg 1.4.5") == (1, 4, 5)
    assert borg.parse_version("borg 1.2.4\n") == (1, 2, 4)
    with pytest.raises(borg.BorgError):
        borg.parse_version("nonsense")
