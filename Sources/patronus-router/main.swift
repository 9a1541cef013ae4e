import CLI

await PatronusRouter.main()
