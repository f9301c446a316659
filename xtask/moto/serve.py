"""Starts moto_server for inferlb's tests, with the SageMaker inference-component
dimension that moto 5.2.5 lacks added to its allowed set.

Usage: python serve.py PORT

moto validates ScalableDimension against a closed Enum in
moto.applicationautoscaling.models (and imports it into .responses). The Enum
cannot be extended in place, so an equivalent one with the extra member
replaces it in both modules before the server starts. Nothing else changes:
resource-type checks already accept "inference-component/<name>".
"""

import sys
from enum import Enum

import moto.applicationautoscaling.models as models
import moto.applicationautoscaling.responses as responses
from moto.server import main

EXTRA = {
    "SAGEMAKER_INFERENCE_COMPONENT_DESIRED_COPY_COUNT": "sagemaker:inference-component:DesiredCopyCount",
}

members = {m.name: m.value for m in models.ScalableDimensionValueSet}
members.update(EXTRA)
Extended = Enum("ScalableDimensionValueSet", members)
models.ScalableDimensionValueSet = Extended
responses.ScalableDimensionValueSet = Extended

if __name__ == "__main__":
    port = sys.argv[1] if len(sys.argv) > 1 else "5000"
    main(["-H", "127.0.0.1", "-p", port])
