"""Subject models: behaviors, architecture families, cohort training, probes and signatures, the zoo store."""
