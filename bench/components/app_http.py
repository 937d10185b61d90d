"""componentize-py entry point: ``bench/cgi/hello.py`` as a ``wasi:http/proxy`` component.

What ``wasmtime serve`` runs per request: the same :func:`hello.answer` as the CGI
forms, given the request's method and its whole body. Built by ``bench/artifacts.py``
with the ``wasi:http`` WIT that ships in npm's ``@bytecodealliance/jco``.
"""

import hello
from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import types


def method_name(method: types.Method) -> str:
    if isinstance(method, types.Method_Other):
        return method.value
    return type(method).__name__.removeprefix("Method_").upper()


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: types.IncomingRequest, response_out: types.ResponseOutparam) -> None:
        method = method_name(request.method())
        incoming = request.consume()
        data = bytearray()
        with incoming.stream() as stream:
            while True:
                try:
                    data += stream.blocking_read(65536)
                except Err:  # closed: the whole body was read
                    break
        types.IncomingBody.finish(incoming)
        content_type, body = hello.answer(method, bytes(data))
        response = types.OutgoingResponse(
            types.Fields.from_list([("content-type", content_type.encode())])
        )
        outgoing = response.body()
        types.ResponseOutparam.set(response_out, Ok(response))
        with outgoing.write() as out:
            out.blocking_write_and_flush(body)
        types.OutgoingBody.finish(outgoing, None)
