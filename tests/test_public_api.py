"""The public API is exactly what __all__ says (httpx tests/test_exported_members.py)."""

from types import ModuleType

import mmrag


def test_all_is_every_public_name_sorted() -> None:
    """A name imported into mmrag/__init__.py is public: it is in __all__, and __all__ is kept sorted."""
    public = [name for name, value in vars(mmrag).items()
              if not name.startswith("_") and not isinstance(value, ModuleType)]  # submodules are not exports
    assert mmrag.__all__ == sorted(public)


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
