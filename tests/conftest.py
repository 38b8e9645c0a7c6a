import os
import sys

# Tests import the hand-written fixtures as a plain module.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
