import CLI

await PatronusRouter.runMain()
