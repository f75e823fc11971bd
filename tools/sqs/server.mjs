// Starts local-aws-sqs on 127.0.0.1:<port> (argv[2]) until killed.
import { createSqsServer } from "local-aws-sqs";

const port = Number(process.argv[2]);
await createSqsServer({ port, hostname: "127.0.0.1", emulateQueueCreationLifecycle: false });
console.log(`local-aws-sqs listening on http://127.0.0.1:${port}`);
