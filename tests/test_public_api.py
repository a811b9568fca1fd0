"""The public API is exactly what __all__ says (httpx tests/test_exported_members.py)."""

import mmrag


def test_all_exports_exist() -> None:
    for name in mmrag.__all__:
        assert hasattr(mmrag, name), name


def test_exports_are_documented() -> None:
    for name in mmrag.__all__:
        obj = getattr(mmrag, name)
        assert (obj.__doc__ or "").strip(), f"mmrag.{name} has no docstring"


def test_no_compromised_litellm_pth_file() -> None:
    """litellm 1.82.8 dropped a .pth that runs at every start (NOTES.md): none may be installed."""
    import site
    from pathlib import Path

    found = [p for d in site.getsitepackages() for p in Path(d).glob("*litellm*.pth")]
    assert found == []
