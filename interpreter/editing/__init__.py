"""Behavior editing as a plain torch library (no Ray, no MLflow): read top to bottom in this order.

- ``protocol``: measure a model's behaviors on fresh sequences and judge an edit (pass/fail);
- ``decoder``, ``editor``: the neuron-aligned decoder, the editor, and the guided edit (edits by optimization);
- ``baselines``: latent steering, task arithmetic, short fine-tuning;
- ``localization``: which neurons carry a behavior, checked by ablation;
- ``config``: the edit recipe (``EditConfig``); ``groups``: zoo models stacked by architecture;
- ``context``: the run an edit reads (zoo, interpreter, split, probes) and its three sequence banks;
- ``train``: train and save the editor and the steering decoder; ``plan``: which edits the evaluation makes;
- ``methods``: the registry of edit methods (``METHODS``); ``evaluate``, ``summary``: score them on held-out
  models; ``apply``: one edit of one model, written with its lineage.
"""
