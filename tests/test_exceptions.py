"""The exception hierarchy: one name per class, the tree in the module docstring is the real
one, the stream's error codes map to classes, and the old underscored names only warn."""

from __future__ import annotations

import re
import traceback

import iotcommute.exceptions as exc_mod
from iotcommute.exceptions import (
    ERROR_CODES,
    ConnectionClosed,
    IotCommuteError,
    OperationTimeout,
    PermissionDenied,
    ProtocolError,
    ServerError,
    UnavailableError,
)

CLASSES = {
    name: obj
    for name, obj in vars(exc_mod).items()
    if isinstance(obj, type) and issubclass(obj, IotCommuteError)
}


def test_one_name_per_class() -> None:
    for name, cls in CLASSES.items():
        assert cls.__name__ == name, f"{name} is another name for {cls.__name__}"
    assert "PermissionError_" not in exc_mod.__all__ and "TimeoutError_" not in exc_mod.__all__
    assert {n for n in exc_mod.__all__ if n in CLASSES} == set(CLASSES)


def test_documented_names_in_reprs_and_tracebacks() -> None:
    for cls in (PermissionDenied, OperationTimeout, UnavailableError):
        err = cls("no")
        assert repr(err).startswith(f"{cls.__name__}('no'")
        shown = traceback.format_exception_only(err)[-1]
        assert shown == f"iotcommute.exceptions.{cls.__name__}: no\n"


def test_the_docstring_tree_is_the_class_tree() -> None:
    doc = exc_mod.__doc__ or ""
    parents: list[type[IotCommuteError]] = []
    drawn = set()
    for line in doc.splitlines():
        m = re.match(r"^    ((?:[│ ]   )*)(?:[├└]── )?(\w+)\s", line)
        if not m or m.group(2) not in CLASSES:
            continue
        depth = len(m.group(1)) // 4 + (1 if "── " in line else 0)
        cls = CLASSES[m.group(2)]
        del parents[depth:]
        if parents:
            assert cls.__bases__ == (parents[-1],), f"{cls.__name__} drawn under {parents[-1]}"
        parents.append(cls)
        drawn.add(cls)
    assert drawn == set(CLASSES.values())


def test_the_old_alias_names_are_gone() -> None:
    for old in ("PermissionError_", "TimeoutError_", "NoSuchError"):
        assert not hasattr(exc_mod, old)


def test_error_codes_map_to_classes_with_that_code() -> None:
    assert set(ERROR_CODES) == {"input", "permission", "not_found", "rate", "server", "unavailable"}
    for code, cls in ERROR_CODES.items():
        assert cls.default_code == code and cls(code).code == code


def test_unavailable_is_a_retryable_server_error() -> None:
    err = UnavailableError("the log store is down", retry_after=2.0)
    assert isinstance(err, ServerError) and err.retryable and not err.fatal
    assert err.retry_after == 2.0 and err.code == "unavailable"
    assert not ServerError("x").retryable


def test_close_code_is_not_code() -> None:
    closed = ConnectionClosed(1001, "going away")
    assert closed.close_code == 1001 and closed.code == "closed" and closed.reason == "going away"
    assert ProtocolError("bad frame").close_code == 1002


def test_messages_are_redacted() -> None:
    err = IotCommuteError(
        "refused: access_token=abc123 api_secret: s3cr3t", headers={"Authorization": "token k:t"}
    )
    assert "abc123" not in str(err) and "s3cr3t" not in repr(err)
    assert err.headers == {"authorization": "***"}


def test_protocol_document_names_the_class_of_each_stream_error_code() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    named = dict(re.findall(r"`([a-z_]+)` →\s+`([A-Za-z]+)`", doc))
    assert named == {code: cls.__name__ for code, cls in ERROR_CODES.items()}
