"""Classifier adapters: TorchScript, state_dict/safetensors + architecture, torchxrayvision, phantom zoo."""
from xcounter.classifiers.architectures import ARCHITECTURES
from xcounter.classifiers.base import Classifier, logit
from xcounter.classifiers.load import load_classifier, xrv_weights_path
from xcounter.classifiers.preprocess import PreprocessProfile, make_profile
from xcounter.classifiers.save import save_torchscript_classifier

__all__ = ["ARCHITECTURES", "Classifier", "PreprocessProfile", "load_classifier", "logit", "make_profile",
           "save_torchscript_classifier", "xrv_weights_path"]
