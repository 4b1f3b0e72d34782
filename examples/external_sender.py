# A sender for Herald's `--dispatch external` (pip install pika): delivers each
# work message to the provider and reports the outcome on herald.status.
# AMQP_URL, PROVIDER_URL, PROVIDER_API_KEY, QUEUE (herald.work.email) and
# MAX_MESSAGES (0: run until stopped) come from the environment.
import json, os, urllib.error, urllib.request
import pika

env = os.environ.get
amqp = pika.BlockingConnection(pika.URLParameters(env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))).channel()
amqp.confirm_delivery()  # a report is ours to drop only once the broker has it
done = 0

def send(work):  # the message alone says what to send
    body = json.dumps({"to": work["to"], "message": work["message"], "type": work["type"]}).encode()
    call = urllib.request.Request(env("PROVIDER_URL", "http://127.0.0.1:3001") + "/v1/notify", body, method="POST",
        headers={"Content-Type": "application/json", "X-API-Key": env("PROVIDER_API_KEY", "test-dev-2026"), "Idempotency-Key": work["id"]})
    try:
        with urllib.request.urlopen(call, timeout=10) as answer:
            return {"outcome": "sent", "provider_id": json.load(answer).get("provider_id")}
    except urllib.error.HTTPError as e:  # 429 and 5xx are worth another try; Herald judges the budget
        return {"outcome": "retry" if e.code == 429 or e.code >= 500 else "failed", "error": f"HTTP {e.code}"}
    except OSError as e:
        return {"outcome": "retry", "error": str(e)}

def handle(channel, method, body):
    try:
        work = json.loads(body)
        if not (isinstance(work, dict) and work.get("form") == "notification" and work.get("to")):
            raise ValueError("not a whole notification")
    except ValueError:  # set aside with why, never dropped
        why = {"x-herald-reason": "unreadable work message", "x-herald-routing-key": method.routing_key}
        return channel.basic_publish("", "herald.dead", body, pika.BasicProperties(delivery_mode=2, headers=why))
    report = {"id": work["id"], "seq": work["seq"], **send(work)}
    channel.basic_publish("", "herald.status", json.dumps(report), pika.BasicProperties(delivery_mode=2))

def on_message(channel, method, properties, body):
    global done
    handle(channel, method, body)
    channel.basic_ack(method.delivery_tag)  # after the broker confirmed the report
    done += 1
    if done == int(env("MAX_MESSAGES", "0")):
        channel.stop_consuming()

amqp.basic_consume(env("QUEUE", "herald.work.email"), on_message)
amqp.start_consuming()
