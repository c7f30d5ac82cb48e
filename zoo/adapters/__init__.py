"""Adapters: read, ablate and edit models zoolens did not train, through the same signature schema as its zoo."""

from zoo.adapters.subject import AdapterError, FamilySubject, ModuleSubject, Subject

__all__ = ["AdapterError", "FamilySubject", "ModuleSubject", "Subject"]
