"""Developmental and dictionary-learning analyses of subject models (plain torch, no Ray or MLflow).

- :mod:`zoo.analysis.llc`: local learning coefficient by SGLD, with the closed-form values it is validated against.
- :mod:`zoo.analysis.grokking`: modular addition, progress measures (restricted/excluded loss, Fourier Gini), lottery tickets.
- :mod:`zoo.analysis.dictionary`: TopK and ReLU+L1 sparse autoencoders and codebook features on hook activations.
- :mod:`zoo.analysis.patching`: activation patching between inputs and Shapley-sampling neuron importance.
"""
