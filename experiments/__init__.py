"""The built-in experiment scripts, installed as ``jaxcnn.experiments`` (see ``jaxcnn list``)."""
