"""One package per model (``sightline.models.<name>``, its ``SPEC``), and what several share
(``generative``). The registry finds them without importing them."""
