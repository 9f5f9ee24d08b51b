# moto_server as the local host runs it. Arguments: host, port.
#
# The same application, request handler and threading as `moto_server`, with four changes:
#
# 1. DynamoDB and DynamoDB Streams requests (`X-Amz-Target: DynamoDB_...`,
#    `DynamoDBStreams_...`) are handled one at a time. moto's
#    DynamoDB keeps its tables in plain dicts with no lock (a write during a scan fails with
#    HTTP 500, "dictionary changed size during iteration"); the GIL bounds moto anyway.
#
# 2. IAM is enforced for IAM users, as AWS enforces it for a function's role. A request signed
#    with an IAM user's access key (the local host gives each function a user holding that
#    function's policies) has its SigV4 signature checked (header or presigned query) and its
#    action checked against the user's policies by moto's own evaluator. A request signed with
#    any other key (the host itself, the tests, an `aws` CLI with dummy credentials, Step
#    Functions' own calls) acts as the account's root user, which identity policies do not
#    restrict on AWS either.
#
# 3. TransactWriteItems undoes only the items it wrote. moto 5.2.5 deep-copies every table a
#    transaction names before it starts, so each transaction costs time in proportion to the
#    whole table: ~90 ms at 2,000 items, seconds once a test suite's shared table is large.
#
# 4. A table's stream keeps its latest 20,000 records and an iterator serves one GetRecords
#    (moto keeps every record and every iterator, for good).
import copy
import datetime
import hashlib
import hmac
import html
import json
import re
import signal
import sys
import threading
from urllib.parse import parse_qsl, quote, urlparse

from werkzeug.exceptions import HTTPException
from werkzeug.serving import run_simple

from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import StreamShard
from moto.dynamodbstreams.models import DynamoDBStreamsBackend
from moto.iam.models import iam_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.exceptions import S3ClientError, S3SignatureDoesNotMatchError
from moto.utilities.utils import get_partition

# Every request goes through the authorization hook; `root_or_checked` decides per request.
settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
moto_authorize = ActionAuthenticatorMixin._authenticate_and_authorize_action


def credential_scope(request):
    """The `Credential=` scope of a header- or query-signed request, split on '/'."""
    authorization = request.headers.get("Authorization", "")
    if "Credential=" in authorization:
        return authorization.partition("Credential=")[2].partition(",")[0].split("/")
    query = dict(parse_qsl(urlparse(request.uri).query, keep_blank_values=True))
    if "X-Amz-Credential" in query:
        return query["X-Amz-Credential"].split("/")
    return None


def iam_user_secret(account_id, region, access_key_id):
    backend = iam_backends[account_id][get_partition(region)]
    for user in backend.list_users("/", None, None):
        for key in user.access_keys:
            if key.access_key_id == access_key_id:
                return key.secret_access_key
    return None


def uri_encode(value):
    return quote(value, safe="-_.~")


def check_presigned(request, secret):
    """SigV4 query authentication (a presigned URL): signature and expiry."""
    parsed = urlparse(request.uri)
    params = parse_qsl(parsed.query, keep_blank_values=True)
    query = dict(params)
    signed_headers = query.get("X-Amz-SignedHeaders", "host").split(";")
    canonical_query = "&".join(
        f"{uri_encode(k)}={uri_encode(v)}"
        for k, v in sorted(params)
        if k != "X-Amz-Signature"
    )
    headers = {k.lower(): v for k, v in request.headers.items()}
    canonical_headers = "".join(
        f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_headers
    )
    canonical_request = "\n".join(
        [
            request.method,
            request.raw_path,
            canonical_query,
            canonical_headers,
            ";".join(signed_headers),
            "UNSIGNED-PAYLOAD",
        ]
    )
    amz_date = query.get("X-Amz-Date", "")
    _, date, region, service, terminal = query["X-Amz-Credential"].split("/")
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            f"{date}/{region}/{service}/{terminal}",
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, terminal):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, query.get("X-Amz-Signature", "")):
        raise S3SignatureDoesNotMatchError()
    try:
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc
        )
        lifetime = datetime.timedelta(seconds=int(query.get("X-Amz-Expires", "0")))
    except ValueError:
        raise S3ClientError("AuthorizationQueryParametersError", "X-Amz-Date or X-Amz-Expires is malformed")
    if datetime.datetime.now(datetime.timezone.utc) > signed_at + lifetime:
        raise S3ClientError("AccessDenied", "Request has expired")
    # moto's evaluator reads the key and scope from an Authorization header.
    return {
        **dict(request.headers),
        "Authorization": f"AWS4-HMAC-SHA256 Credential={query['X-Amz-Credential']}, "
        f"SignedHeaders={query.get('X-Amz-SignedHeaders', 'host')}, "
        f"Signature={query.get('X-Amz-Signature', '')}",
    }


# AWS authorizes a transaction by the actions inside it (there is no IAM action
# TransactWriteItems); moto 5.2.5 checks the transaction's own name instead.
TRANSACT_PARTS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}


def actions_of(request):
    action = request._get_action()
    if action in ("TransactWriteItems", "TransactGetItems"):
        try:
            items = json.loads(request.raw_body)["TransactItems"]
            return sorted({TRANSACT_PARTS.get(kind, kind) for item in items for kind in item})
        except (ValueError, KeyError, TypeError):
            pass  # malformed: DynamoDB itself answers it
    return [action]


def signed_data(request):
    """What moto's checker signs as the payload. Its `data` is the parsed query string when
    the body is empty (a REST GET or DELETE such as Scheduler's DeleteSchedule ?groupName=),
    which it would sign as a form body: the signature covers the bytes sent, none. S3 signs
    its payload hash in a header, and its checker wants `data` as it was."""
    scope = credential_scope(request) or []
    if request.raw_body or (len(scope) > 3 and scope[3] == "s3"):
        return request.data
    return b""


def iam_request(request, iam_request_cls, headers, action):
    query = urlparse(request.uri).query
    return iam_request_cls(
        account_id=request.current_account,
        method=request.method,
        path=request.raw_path + (f"?{query}" if query else ""),
        data=signed_data(request),
        body=request.raw_body,
        headers=headers,
        action=action,
    )


class JsonProtocolError(HTTPException):
    """An auth failure as the JSON-protocol services (DynamoDB, Step Functions, SQS) answer
    it; moto answers XML, which their SDKs cannot read."""

    code = 400
    JSON_TYPES = {
        "AccessDenied": "AccessDeniedException",
        "SignatureDoesNotMatch": "InvalidSignatureException",
        "InvalidClientTokenId": "UnrecognizedClientException",
    }

    def __init__(self, xml_error):
        text = str(xml_error.description or "")
        code = re.search(r"<Code>(.*?)</Code>", text)
        message = re.search(r"<Message>(.*?)</Message>", text, re.S)
        code = code.group(1) if code else "AccessDenied"
        super().__init__(
            description=json.dumps(
                {
                    "__type": self.JSON_TYPES.get(code, code),
                    "message": html.unescape(message.group(1)) if message else code,
                }
            )
        )


def root_or_checked(self, iam_request_cls, resource="*"):
    try:
        check(self, iam_request_cls, resource)
    except HTTPException as error:
        if "json" in self.headers.get("Content-Type", "") and not isinstance(
            error, JsonProtocolError
        ):
            raise JsonProtocolError(error)
        raise


def check(self, iam_request_cls, resource):
    if self.headers.get("X-Amz-Target") in ActionAuthenticatorMixin.PUBLIC_OPERATIONS:
        return
    # A browser's CORS preflight before a PUT to a presigned URL carries the URL's query but
    # is an OPTIONS, so its signature never matches; S3 answers preflights from the bucket's
    # CORS rules without authenticating them (the console's batch upload needs this).
    if self.method == "OPTIONS":
        return
    scope = credential_scope(self)
    if scope is None or len(scope) < 3:
        return  # unsigned: moto's S3 handles anonymous access by its own ACL checks
    secret = iam_user_secret(self.current_account, scope[2], scope[0])
    if secret is None:
        return  # not an IAM user's key: the account root
    if "Credential=" in self.headers.get("Authorization", ""):
        headers = self.headers
        iam_request(self, iam_request_cls, headers, self._get_action()).check_signature()
    else:
        # A presigned URL (S3): moto's evaluator reads header signatures only.
        headers = check_presigned(self, secret)
    for action in actions_of(self):
        iam_request(self, iam_request_cls, headers, action).check_action_permitted(resource)


ActionAuthenticatorMixin._authenticate_and_authorize_action = root_or_checked

def transact_write_items(self, transact_items):
    """DynamoDB's all-or-nothing write, as moto 5.2.5 does it (same checks, same errors,
    same cancellation reasons), without the copy of whole tables. Every condition is checked
    before anything is written, as DynamoDB does: a transaction's items are distinct, so no
    write can change another item's condition. A write that still fails (a validation error)
    is undone from a copy of only the items written before it, stream records included."""
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    targets = set()
    writes = []
    reasons = []
    for item in transact_items:
        if len(item) > 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(item.items()))
        old_image = None
        try:
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            table = self.get_table(op["TableName"])
            if op_type == "Put":
                attrs = op["Item"]
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
            target = (str(op["TableName"]), str(dict(sorted(key.items()))))
            if target in targets:
                raise MultipleTransactionsException()
            targets.add(target)
            current = self.get_item(op["TableName"], key)
            if op.get("ConditionExpression") is not None:
                condition = get_filter_expression(
                    op["ConditionExpression"],
                    op.get("ExpressionAttributeNames"),
                    op.get("ExpressionAttributeValues"),
                )
                if not condition.expr(current):
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        old_image = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=old_image)
            if op_type != "ConditionCheck":
                writes.append((len(reasons), op_type, op, table, key))
            reasons.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            raise
        except ConditionalCheckFailed as e:
            reasons.append(("ConditionalCheckFailed", str(e.message), old_image))
        except Exception as e:  # noqa: BLE001 - reported as the item's cancellation reason
            reasons.append((type(e).__name__, str(e), old_image))
    if any(code is not None for code, _, _ in reasons):
        raise TransactionCanceledException(reasons)

    undo = []
    try:
        for position, op_type, op, table, key in writes:
            hash_value, range_value = self.get_keys_value(table, key)
            before = copy.deepcopy(table.get_item(hash_value, range_value))
            # The next record's sequence number, not an index: the shard may be trimmed.
            records = stream_end(table.stream_shard)
            undo.append((table, hash_value, range_value, before, records))
            names = op.get("ExpressionAttributeNames")
            values = op.get("ExpressionAttributeValues")
            condition = op.get("ConditionExpression")
            if op_type == "Put":
                self.put_item(
                    op["TableName"],
                    op["Item"],
                    condition_expression=condition,
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
            elif op_type == "Delete":
                self.delete_item(
                    op["TableName"],
                    key,
                    condition_expression=condition,
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
            else:
                self.update_item(
                    op["TableName"],
                    key,
                    update_expression=op["UpdateExpression"],
                    condition_expression=condition,
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
    except Exception as error:
        for table, hash_value, range_value, before, records in reversed(undo):
            if range_value is not None:
                table.items[hash_value].pop(range_value, None)
                if before is not None:
                    table.items[hash_value][range_value] = before
            else:
                table.items.pop(hash_value, None)
                if before is not None:
                    table.items[hash_value] = before
            if table.stream_shard is not None:
                shard = table.stream_shard
                del shard.items[max(0, records - shard.starting_sequence_number):]
        if isinstance(error, (MultipleTransactionsException, MockValidationException)):
            raise
        reasons[position] = (type(error).__name__, str(error), None)
        raise TransactionCanceledException(reasons) from error


DynamoDBBackend.transact_write_items = transact_write_items


# moto 5.2.5 keeps every stream record of a table for the emulator's life (one shard, never
# trimmed): with the stream on, the test suite's tables would grow the emulator's memory by
# a copy of both images of every write. DynamoDB keeps 24 hours; here a shard keeps its
# latest STREAM_RECORDS_KEPT records, and a reader behind them (the event publisher's local
# mapping, which reads a hundred at a time, four times a second) goes on from the oldest kept.
STREAM_RECORDS_KEPT = 20_000
moto_stream_add = StreamShard.add
moto_stream_get = StreamShard.get


def stream_end(shard):
    return 0 if shard is None else shard.starting_sequence_number + len(shard.items)


def add_trimmed(self, old, new):
    moto_stream_add(self, old, new)
    excess = len(self.items) - STREAM_RECORDS_KEPT
    if excess >= 1_000:  # in steps, so a write rarely pays for a trim
        del self.items[:excess]
        self.starting_sequence_number += excess


def get_trimmed(self, start, quantity):
    return moto_stream_get(self, max(start, self.starting_sequence_number), quantity)


StreamShard.add = add_trimmed
StreamShard.get = get_trimmed

# moto also keeps every shard iterator it hands out (GetRecords returns a new one each call):
# a reader polling four times a second would leak ~1 KB a call for the emulator's life. Here
# an iterator serves one successful GetRecords (on AWS it could be reused for 15 minutes; the
# local mapping never does).
moto_get_records = DynamoDBStreamsBackend.get_records


def get_records_once(self, iterator_arn, limit):
    out = moto_get_records(self, iterator_arn, limit)
    self.shard_iterators.pop(iterator_arn, None)
    return out


DynamoDBStreamsBackend.get_records = get_records_once

app = DomainDispatcherApplication(create_backend_app)
app.debug = True
lock = threading.Lock()


def serialized(environ, start_response):
    # DynamoDB and its streams (whose records the writes append and trim) one at a time.
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
        with lock:
            return list(app(environ, start_response))
    return app(environ, start_response)


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
run_simple(sys.argv[1], int(sys.argv[2]), serialized, threaded=True, request_handler=MotoRequestHandler)
