"""``mobilenets serve``: a model behind HTTP, with dynamic batching, metrics and a page to try it.

One job per module, imported in this order (no cycles):

* ``errors``: the JSON error every failed request gets (status, code, message);
* ``decode``: request bytes -> a decoded image, with the pixel limit (decompression bombs);
* ``tasks``: what a model does with images, one class per task (classifier, detector): prepare
  one image as model input, run a batch, postprocess the outputs into one answer per image;
* ``servable``: what is served: a checkpoint or exported file, loaded in its backend as a task;
* ``batcher``: gathers concurrent requests into batches and runs them off the event loop;
* ``metrics``: Prometheus counters and histograms, and the middleware that counts requests;
* ``limits``: the request-body size limit (ASGI middleware);
* ``app``: the Starlette application (routes, error handlers, lifespan);
* ``server``: binds the socket and runs uvicorn until SIGTERM or Ctrl-C, draining requests in flight;
* ``static/index.html``: the page (no build step).

Starlette, uvicorn, python-multipart and prometheus_client come with ``pip install 'mobilenets[serve]'``.
"""
