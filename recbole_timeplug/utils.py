"""Small helpers shared by the trainers, the runners and the hyperparameter search."""


def plain_metrics(result):
    """RecBole's metric dict (an OrderedDict of numpy/torch scalars) as ``{str: float}``; None stays None."""
    if result is None:
        return None
    return {str(k): float(v) for k, v in dict(result).items()}
