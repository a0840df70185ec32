"""Serving a trained model over HTTP: a JSON API with dynamic batching, and a page to try it (titlegen-serve).

* `engine`: the model and tokenizer behind one ``generate_titles(articles, **settings)`` method, so that
  another backend can take their place.
* `schema`: a request body checked field by field, with the messages of titlegen-predict's input checks.
* `batching`: concurrent requests gathered into one generation batch, run off the event loop.
* `app`: the FastAPI application (``POST /v1/titles``, ``GET /healthz``, ``GET /``).
"""
