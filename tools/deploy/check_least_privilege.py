"""Least privilege of the task role: it must grant exactly the SQS actions
the code calls (every `self.client.<op>()` in src/queue.rs), on the jobs
queue only, and nothing else.

SQS authorises its batch APIs with the single-message action names: there
is no IAM action sqs:SendMessageBatch, sqs:DeleteMessageBatch or
sqs:ChangeMessageVisibilityBatch; sqs:SendMessage, sqs:DeleteMessage and
sqs:ChangeMessageVisibility cover them (Amazon SQS Developer Guide,
"Amazon SQS batch actions", Permissions).
"""

import copy
import re

from harness import ROOT, check, container, load_template

QUEUE_RS = ROOT / "src" / "queue.rs"

# API operation -> the IAM action that authorises it, where they differ.
AUTHORISED_BY = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}

CALL = re.compile(r"\bself\s*\.\s*client\s*\.\s*([a-z][a-z0-9_]*)\s*\(")


def strip_comments(rust):
    """Drops // and /* */ comments so that a commented-out call is not
    counted (string literals in queue.rs never contain these)."""
    rust = re.sub(r"/\*.*?\*/", "", rust, flags=re.S)
    return re.sub(r"//[^\n]*", "", rust)


def operations(rust):
    """SQS API operations (PascalCase) called through self.client."""
    return {"".join(p.title() for p in op.split("_")) for op in CALL.findall(strip_comments(rust))}


def iam_actions(ops):
    return {"sqs:" + AUTHORISED_BY.get(op, op) for op in ops}


def as_list(v):
    return v if isinstance(v, list) else [v]


def queue_resource(template):
    """The logical id of the queue the container's SQS_QUEUE_URL names."""
    _, c = container(template)
    env = {e["Name"]: e["Value"] for e in c.get("Environment", [])}
    url = env.get("SQS_QUEUE_URL")
    assert isinstance(url, dict) and "Ref" in url, f"SQS_QUEUE_URL must be !Ref <queue>, is {url!r}"
    name = url["Ref"]
    assert template["Resources"].get(name, {}).get("Type") == "AWS::SQS::Queue", f"{name} is not an AWS::SQS::Queue"
    return name


def task_role(template):
    task, _ = container(template)
    arn = task["Properties"].get("TaskRoleArn")
    assert isinstance(arn, dict) and "Fn::GetAtt" in arn, f"TaskRoleArn must be !GetAtt <role>.Arn, is {arn!r}"
    name, attr = arn["Fn::GetAtt"] if isinstance(arn["Fn::GetAtt"], list) else arn["Fn::GetAtt"].split(".", 1)
    assert attr == "Arn" and template["Resources"][name]["Type"] == "AWS::IAM::Role", f"{name} is not a role"
    return name


def role_statements(template, role):
    """Every policy statement that applies to the role: inline policies and
    AWS::IAM::Policy / ManagedPolicy resources attached to it. A managed
    policy ARN (AWS-managed or otherwise) cannot be inspected: refused."""
    props = template["Resources"][role]["Properties"]
    problems = []
    if props.get("ManagedPolicyArns"):
        problems.append(f"{role} has ManagedPolicyArns {props['ManagedPolicyArns']!r}, which this check cannot inspect")
    docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
    for name, res in template["Resources"].items():
        if res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"):
            p = res["Properties"]
            roles = as_list(p.get("Roles", [])) + ([p["RoleName"]] if "RoleName" in p else [])
            if {"Ref": role} in roles:
                docs.append(p["PolicyDocument"])
    statements = [s for d in docs for s in as_list(d["Statement"])]
    return statements, problems


def problems_of(template, rust):
    """Everything wrong with the task role's grants, as sentences."""
    expected = iam_actions(operations(rust))
    queue = queue_resource(template)
    role = task_role(template)
    statements, problems = role_statements(template, role)
    queue_arn = {"Fn::GetAtt": [queue, "Arn"]}
    granted = set()
    for s in statements:
        if s.get("Effect") != "Allow":
            continue
        for key in ("NotAction", "NotResource", "NotPrincipal"):
            if key in s:
                problems.append(f"a statement of {role} uses {key} (grants too much to reason about)")
        for action in as_list(s.get("Action", [])):
            if not isinstance(action, str) or "*" in action or "?" in action:
                problems.append(f"{role} grants a wildcard or computed action {action!r}")
            elif action not in expected:
                problems.append(f"{role} grants {action}, which src/queue.rs does not need")
            granted.add(action)
        for resource in as_list(s.get("Resource", [])):
            if resource != queue_arn:
                problems.append(f"{role} grants on {resource!r}, not only on the queue {queue} (!GetAtt {queue}.Arn)")
    for action in sorted(expected - granted):
        problems.append(f"{role} misses {action}, which src/queue.rs needs")
    return problems


@check
def task_role_grants_exactly_the_sqs_actions_the_code_calls():
    rust = QUEUE_RS.read_text()
    ops = operations(rust)
    assert ops, "no self.client.<op>() call found in src/queue.rs: has the queue client moved?"
    problems = problems_of(load_template(), rust)
    assert not problems, "; ".join(problems)


@check
def the_operation_parser_reads_rust_calls_and_maps_batches():
    rust = """
        self.client.send_message_batch().queue_url(u).send().await;
        self
            .client
            .delete_message_batch()
        // self.client.purge_queue()
        /* self.client.delete_queue() */
        self.client.get_queue_attributes();
        other.client.list_queues();
    """
    assert operations(rust) == {"SendMessageBatch", "DeleteMessageBatch", "GetQueueAttributes"}, operations(rust)
    assert iam_actions(operations(rust)) == {"sqs:SendMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
    assert iam_actions({"ChangeMessageVisibilityBatch", "PurgeQueue"}) == {
        "sqs:ChangeMessageVisibility",
        "sqs:PurgeQueue",
    }


@check
def the_check_fails_on_an_extra_a_missing_or_a_widened_grant():
    """The check itself must be able to fail: mutated templates and code."""
    rust = QUEUE_RS.read_text()
    template = load_template()
    role = task_role(template)

    def statement(t):
        return t["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]

    extra = copy.deepcopy(template)
    statement(extra)["Action"].append("sqs:PurgeQueue")
    assert any("sqs:PurgeQueue" in p for p in problems_of(extra, rust))

    missing = copy.deepcopy(template)
    statement(missing)["Action"].remove("sqs:ReceiveMessage")
    assert any("misses sqs:ReceiveMessage" in p for p in problems_of(missing, rust))

    widened = copy.deepcopy(template)
    statement(widened)["Resource"] = "*"
    assert any("not only on the queue" in p for p in problems_of(widened, rust))

    wildcard = copy.deepcopy(template)
    statement(wildcard)["Action"] = ["sqs:*"]
    assert any("wildcard" in p for p in problems_of(wildcard, rust))

    managed = copy.deepcopy(template)
    managed["Resources"][role]["Properties"]["ManagedPolicyArns"] = ["arn:aws:iam::aws:policy/AmazonSQSFullAccess"]
    assert any("ManagedPolicyArns" in p for p in problems_of(managed, rust))

    # A new call in the code needs a new grant.
    more_code = rust + "\nfn f(&self) { self.client.purge_queue(); }\n"
    assert any("misses sqs:PurgeQueue" in p for p in problems_of(template, more_code))


@check
def execution_role_reads_exactly_the_injected_secrets():
    template = load_template()
    task, c = container(template)
    arn = task["Properties"]["ExecutionRoleArn"]["Fn::GetAtt"]
    role = arn[0] if isinstance(arn, list) else arn.split(".")[0]
    statements, problems = role_statements(template, role)
    assert not problems, "; ".join(problems)

    def secret_of(value_from):
        # "<arn>:<json-key>::" (a !Sub) names the same secret as <arn>.
        if isinstance(value_from, dict) and "Fn::Sub" in value_from:
            m = re.fullmatch(r"\$\{(\w+)\}(:[^:]*:[^:]*:[^:]*)?", value_from["Fn::Sub"])
            assert m, f"unexpected ValueFrom {value_from!r}"
            return {"Ref": m.group(1)}
        return value_from

    injected = {str(secret_of(s["ValueFrom"])) for s in c.get("Secrets", [])}
    readable = set()
    for s in statements:
        actions = {a for a in as_list(s.get("Action", [])) if a.startswith("secretsmanager:") or a.startswith("kms:")}
        if not actions:
            continue
        assert s.get("Effect") == "Allow" and actions == {"secretsmanager:GetSecretValue"}, f"unexpected {actions}"
        readable |= {str(r) for r in as_list(s["Resource"])}
    assert readable == injected, f"execution role reads {sorted(readable)}, the container injects {sorted(injected)}"


if __name__ == "__main__":
    from harness import main

    main([__name__])
