"""Every engine objective `(model, batch, train) -> (outputs, terms)`, in one package:

    labels      training on the labels alone (teachers, baselines)
    logit       a logit loss against a teacher signal, with schedules; EMA teacher; mutual learning
    features    feature methods on hooked layer pairs (FitNet, AT, SP, RKD, CRD)
    regression  seed 001's weighted regression terms, and function matching on new inputs
    taps        the one hook mechanism (LayerTap) and the one --feature-pair grammar they share
"""
