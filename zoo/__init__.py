"""Subject models: behaviors, architecture families, cohort training, probes and signatures, the zoo store."""

import zoo.families  # noqa: F401 - registers every family, so any ArchSpec can check its family name
